"""LayerNorm: the decomposed form (opset < 17 exports) and the ONNX LayerNormalization op → eet.LayerNorm.

Decomposed, as exporters write it (Div or Mul-by-Reciprocal, Pow(d, 2) or d*d, with or without beta):
    mean = ReduceMean(x, -1); d = x - mean; var = ReduceMean(d^2, -1)
    y = d / Sqrt(var + eps) * gamma + beta
Lowers to templates/*/layer_norm.py.j2.
"""
from __future__ import annotations

import numpy as np

from eetjit.ir import Graph
from eetjit.rewrite.pattern import Const, Either, Flat, Match, Op, Var, axes_of, last_axis, near, scalar
from eetjit.rewrite.rule import Rule, emit

TEMPLATE = "layer_norm"


def _decomposed(with_beta: bool):
    x = Var("x")
    mean = Op("ReduceMean", x, name="mean", partial=True)
    d = Op("Sub", x, mean, name="d")
    var = Op("ReduceMean", Either(Op("Pow", d, Const("two")), Op("Mul", d, d)), name="var", partial=True)
    std = Op("Sqrt", Op("Add", var, Const("eps")))
    norm = Either(Op("Div", d, std), Flat("Mul", d, Op("Reciprocal", std)))
    scaled = Flat("Mul", norm, Const("gamma"), name="scale")
    return Op("Add", scaled, Const("beta"), name="root") if with_beta else scaled


def _hidden(m: Match) -> int | None:
    g = m.const("gamma")
    return None if g is None or g.ndim != 1 else g.shape[0]


def check_decomposed(graph: Graph, m: Match) -> str | None:
    x = m["x"]
    for key in ("mean", "var"):
        node = m[key]
        if not last_axis(node, axes_of(node), x.rank):
            return f"{key} reduces over axes {axes_of(node)}, not the last axis only"
        if node.attrs.get("keepdims", 1) != 1:
            return f"{key} does not keep dims"
    two = m.const("two")
    if two is not None and not near(two, 2.0, 1e-6):
        return f"the variance squares with exponent {scalar(two)}, not 2"
    eps = scalar(m.const("eps"))
    if eps is None or not 0 < eps < 1e-2:
        return f"epsilon {eps} is not a small positive scalar"
    E = _hidden(m)
    if E is None:
        return "gamma is not a 1-D constant"
    if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != E:
        return f"gamma has {E} elements but the normalized axis has {x.shape[-1]}"
    beta = m.const("beta")
    if m.get("beta") is not None and (beta is None or beta.shape not in ((E,),)):
        return f"beta shape {None if beta is None else beta.shape} does not match gamma ({E},)"
    return None


def rewrite_decomposed(graph: Graph, m: Match) -> None:
    root = m.nodes.get("root") or m["scale"]
    eps = scalar(m.const("eps"))
    gamma = m["gamma"]
    inputs = [m["x"], gamma, m.get("beta")]
    if gamma.const.dtype != np.float32 or (m.get("beta") is not None and m["beta"].const.dtype != np.float32):
        pass  # dtype is kept as exported; the kernel reads the weight dtype
    emit(graph, m, root, "LayerNorm", inputs, {"epsilon": eps}, [root.outputs[0]])


def _onnx_ln_pattern():
    return Op("LayerNormalization", Var("x"), Const("gamma"), name="root", partial=True)


def check_onnx(graph: Graph, m: Match) -> str | None:
    node = m["root"]
    axis = node.attrs.get("axis", -1)
    x = m["x"]
    if not (axis == -1 or (x.rank is not None and axis == x.rank - 1)):
        return f"LayerNormalization over axis {axis}, not the last one"
    if any(o.users or graph.is_output(o) for o in node.outputs[1:]):
        return "LayerNormalization's Mean/InvStdDev outputs are used"
    beta = node.input(2)
    if beta is not None and not beta.is_const:
        return "beta is not a constant"
    if m.const("gamma").ndim != 1:
        return "gamma is not 1-D"
    return None


def rewrite_onnx(graph: Graph, m: Match) -> None:
    node = m["root"]
    emit(graph, m, node, "LayerNorm", [m["x"], m["gamma"], node.input(2)],
         {"epsilon": float(node.attrs.get("epsilon", 1e-5))}, [node.outputs[0]])


RULES = [
    Rule("LayerNorm/LayerNormalization", "LayerNorm", _onnx_ln_pattern(), check_onnx, rewrite_onnx,
         template=TEMPLATE),
    Rule("LayerNorm/decomposed+beta", "LayerNorm", _decomposed(True), check_decomposed, rewrite_decomposed,
         template=TEMPLATE),
    Rule("LayerNorm/decomposed", "LayerNorm", _decomposed(False), check_decomposed, rewrite_decomposed,
         root_ops=("Mul",), template=TEMPLATE),
]
