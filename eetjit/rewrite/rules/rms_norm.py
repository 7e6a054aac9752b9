"""RMSNorm (LLaMA): the decomposed form and the ONNX RMSNormalization op (opset 23) → eet.RMSNorm.

Decomposed, as exporters write `weight * (x.float() * rsqrt(mean(x.float()^2, -1) + eps)).to(x.dtype)`:
    ms = ReduceMean(Pow(x, 2) | x*x, -1); std = Sqrt(ms + eps)
    y = gamma * Cast?(x * (1/std | Reciprocal(std)) | x / std | x * Pow(ms + eps, -0.5))
The Casts to float32 and back are optional (cleanup drops them when they are no-ops); with a float16 model
the fused op scales by gamma before rounding to float16 where the export rounds first (one ulp apart).
Lowers to templates/*/rms_norm.py.j2.
"""
from __future__ import annotations

from eetjit.ir import Graph
from eetjit.rewrite.pattern import Const, Either, Flat, Match, Op, Skip, Var, axes_of, last_axis, near, scalar
from eetjit.rewrite.rule import Rule, emit

TEMPLATE = "rms_norm"


def _decomposed():
    x = Var("x")
    x32 = Skip("Cast", x)                      # the float32 upcast, when the model is not float32 already
    square = Either(Op("Pow", x32, Const("two")), Op("Mul", x32, x32))
    ms_eps = Op("Add", Op("ReduceMean", square, name="mean", partial=True), Const("eps"))
    std = Op("Sqrt", ms_eps)
    inv_std = Either(Op("Div", Const("one"), std), Op("Reciprocal", std), Op("Pow", ms_eps, Const("neg_half")))
    norm = Either(Flat("Mul", x32, inv_std), Op("Div", x32, std))
    return Either(Flat("Mul", Skip("Cast", norm), Const("gamma"), name="root"),
                  Flat("Mul", x32, inv_std, Const("gamma"), name="root"))  # x * (inv_std * gamma) and friends


def _hidden(graph: Graph, m: Match) -> tuple[int | None, str | None]:
    """E from gamma (1-D, or [1, .., 1, E]); the reason when gamma does not fit x."""
    g = m.const("gamma")
    if g is None or g.ndim == 0 or any(d != 1 for d in g.shape[:-1]):
        return None, f"gamma shape {None if g is None else g.shape} is not [E]"
    E = g.shape[-1]
    x = m["x"]
    if x.shape is not None and x.shape and isinstance(x.shape[-1], int) and x.shape[-1] != E:
        return None, f"gamma has {E} elements but the normalized axis has {x.shape[-1]}"
    if x.rank is not None and g.ndim > x.rank:
        return None, f"gamma rank {g.ndim} is above x rank {x.rank}"
    return E, None


def _float_ok(graph: Graph, m: Match, root_out) -> str | None:
    x = m["x"]
    if x.dtype is not None and x.dtype.kind != "f":
        return f"x is {x.dtype}, not a float tensor"
    if x.dtype is not None and root_out.dtype is not None and x.dtype != root_out.dtype:
        return f"the norm reads {x.dtype} but returns {root_out.dtype} (no Cast back to the input dtype)"
    return None


def check_decomposed(graph: Graph, m: Match) -> str | None:
    x, mean = m["x"], m["mean"]
    if not last_axis(mean, axes_of(mean), x.rank):
        return f"the mean of squares reduces over axes {axes_of(mean)}, not the last axis only"
    if mean.attrs.get("keepdims", 1) != 1:
        return "the mean of squares does not keep dims"
    for key, want, what in (("two", 2.0, "the square uses exponent"), ("one", 1.0, "the reciprocal divides"),
                            ("neg_half", -0.5, "the rsqrt uses exponent")):
        c = m.const(key)
        if m.get(key) is not None and (scalar(c) is None or not near(c, want, 1e-6)):
            return f"{what} {scalar(c) if scalar(c) is not None else c.shape}, not {want:g}"
    eps = scalar(m.const("eps"))
    if eps is None or not 0 < eps < 1e-2:
        return f"epsilon {eps} is not a small positive scalar"
    for node in m.covered:
        if node.op_type == "Cast" and node.inputs[0] is x and node.attrs.get("to") != 1:
            return f"the upcast of x goes to ONNX type {node.attrs.get('to')}, not float32"
    _, why = _hidden(graph, m)
    if why:
        return why
    return _float_ok(graph, m, m["root"].outputs[0])


def _gamma_1d(graph: Graph, m: Match):
    g = m["gamma"]
    if g.const.ndim == 1:
        return g
    return graph.constant(g.const.reshape(-1), name=f"{g.name}_1d")


def rewrite_decomposed(graph: Graph, m: Match) -> None:
    root = m["root"]
    emit(graph, m, root, "RMSNorm", [m["x"], _gamma_1d(graph, m)], {"epsilon": scalar(m.const("eps"))},
         [root.outputs[0]])


def _onnx_pattern():
    return Op("RMSNormalization", Var("x"), Const("gamma"), name="root")


def check_onnx(graph: Graph, m: Match) -> str | None:
    node, x = m["root"], m["x"]
    axis = node.attrs.get("axis", -1)
    if not (axis == -1 or (x.rank is not None and axis == x.rank - 1)):
        return f"RMSNormalization over axis {axis}, not the last one only"
    if node.attrs.get("stash_type", 1) != 1:
        return f"RMSNormalization stash_type {node.attrs.get('stash_type')} is not float32"
    g = m.const("gamma")
    if x.dtype is not None and g.dtype != x.dtype:
        return f"scale is {g.dtype} but x is {x.dtype} (the output would take scale's dtype)"
    _, why = _hidden(graph, m)
    if why:
        return why
    return _float_ok(graph, m, node.outputs[0])


def rewrite_onnx(graph: Graph, m: Match) -> None:
    node = m["root"]
    emit(graph, m, node, "RMSNorm", [m["x"], _gamma_1d(graph, m)],
         {"epsilon": float(node.attrs.get("epsilon", 1e-5))}, [node.outputs[0]])


RULES = [
    Rule("RMSNorm/RMSNormalization", "RMSNorm", _onnx_pattern(), check_onnx, rewrite_onnx, template=TEMPLATE),
    Rule("RMSNorm/decomposed", "RMSNorm", _decomposed(), check_decomposed, rewrite_decomposed,
         root_ops=("Mul",), template=TEMPLATE),
]
