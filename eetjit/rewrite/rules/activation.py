"""Activation epilogues: act(Linear(x)) → eet.Linear(x, W, b, activation=act).

    gelu_tanh  0.5·y·(1 + tanh(√(2/π)·(y + 0.044715·y³)))   GPT-2 `gelu_new`; y³ as Pow(y, 3) or y·y·y
    gelu_erf   0.5·y·(1 + erf(y / √2))                        BERT; Div by √2 or Mul by 1/√2
    Gelu(y, approximate="none" | "tanh")                      the ONNX op (opset 20)
    relu       Relu(y)
    silu       y·Sigmoid(y)
Products and sums are matched as flattened chains (any association and operand order). Constants are bound
by the pattern and compared in the check, so a wrong one is a near miss that names it. The Linear's output
must feed only the activation (it disappears). Lowers to templates/*/linear_epilogue.py.j2.
"""
from __future__ import annotations

import math

from eetjit.ir import Graph
from eetjit.rewrite.pattern import Const, Either, Flat, Match, Op, Var, near, scalar
from eetjit.rewrite.rule import Rule, emit
from eetjit.rewrite.rules.linear import drop_dead, is_linear

TEMPLATE = "linear_epilogue"
RTOL = 1e-5  # float32 rounding of the exporters' constants is ~1e-7; 0.0447 for 0.044715 must fail


class LinearOut(Var):
    """The output of a plain eet.Linear (no activation, no split); the Linear joins the match's covered
    nodes (under the name "lin") so that another reader of its output blocks the fusion."""

    def __init__(self, name: str = "y"):
        super().__init__(name, lambda v: is_linear(v.producer, plain=True) and len(v.producer.outputs) == 1)

    def match(self, v, m):
        first = self.name not in m.values
        for m2 in super().match(v, m):
            if first:  # Var.match bound a fresh copy: safe to extend
                m2.covered.append(v.producer)
                m2.nodes["lin"] = v.producer
            yield m2


def _gelu_tanh():
    y = LinearOut()
    cube = Either(Flat("Mul", Const("k"), Op("Pow", y, Const("three"))), Flat("Mul", Const("k"), y, y, y))
    inner = Flat("Mul", Const("c"), Op("Add", y, cube))
    return Flat("Mul", Const("half"), y, Op("Add", Op("Tanh", inner), Const("one")), name="root")


def _gelu_erf():
    y = LinearOut()
    scaled = Either(Op("Div", y, Const("sqrt2")), Flat("Mul", y, Const("inv_sqrt2")))
    return Flat("Mul", Const("half"), y, Op("Add", Op("Erf", scaled), Const("one")), name="root")


def _constants(m: Match, want: dict[str, float], what: str) -> str | None:
    for key, target in want.items():
        if m.get(key) is None:
            continue
        c = m.const(key)
        if scalar(c) is None:
            return f"{what} constant {m[key].name!r} holds several values, not {target:.6g}"
        if not near(c, target, RTOL):
            return f"{what} constant {scalar(c):.6g} is not {target:.6g} ({key})"
    return None


def check_gelu_tanh(graph: Graph, m: Match) -> str | None:
    return _constants(m, {"half": 0.5, "one": 1.0, "c": math.sqrt(2 / math.pi), "k": 0.044715, "three": 3.0},
                      "GELU-tanh")


def check_gelu_erf(graph: Graph, m: Match) -> str | None:
    return _constants(m, {"half": 0.5, "one": 1.0, "sqrt2": math.sqrt(2), "inv_sqrt2": 1 / math.sqrt(2)},
                      "GELU-erf")


def check_gelu_op(graph: Graph, m: Match) -> str | None:
    approx = m["root"].attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx not in ("none", "tanh"):
        return f"Gelu approximate={approx!r} is neither 'none' nor 'tanh'"
    return None


def check_any(graph: Graph, m: Match) -> str | None:
    return None


def _rewrite(activation):
    def rewrite(graph: Graph, m: Match) -> None:
        root, lin = m["root"], m["lin"]
        act = activation(root) if callable(activation) else activation
        emit(graph, m, root, "Linear", list(lin.inputs), {**lin.attrs, "activation": act}, [root.outputs[0]])
        drop_dead(graph, m.covered)
    return rewrite


def _gelu_op_kind(root) -> str:
    approx = root.attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return "gelu_tanh" if approx == "tanh" else "gelu_erf"


RULES = [
    Rule("Activation/gelu_tanh", "Linear", _gelu_tanh(), check_gelu_tanh, _rewrite("gelu_tanh"), template=TEMPLATE),
    Rule("Activation/gelu_erf", "Linear", _gelu_erf(), check_gelu_erf, _rewrite("gelu_erf"), template=TEMPLATE),
    Rule("Activation/Gelu", "Linear", Op("Gelu", LinearOut(), name="root"), check_gelu_op, _rewrite(_gelu_op_kind),
         template=TEMPLATE),
    Rule("Activation/relu", "Linear", Op("Relu", LinearOut(), name="root"), check_any, _rewrite("relu"),
         template=TEMPLATE),
    Rule("Activation/silu", "Linear", Op("Mul", LinearOut(), Op("Sigmoid", LinearOut()), name="root"), check_any,
         _rewrite("silu"), template=TEMPLATE),
]
