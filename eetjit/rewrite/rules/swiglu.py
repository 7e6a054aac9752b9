"""SwiGLU (the LLaMA MLP): silu(x W_gate + b_gate) · (x W_up + b_up) → eet.SwiGLU(x, W_gate, W_up, b_gate?, b_up?).

Two shapes of the same thing, depending on whether the activation epilogue already fired on the gate:
    Mul(Linear(x, W_gate, activation=silu), Linear(x, W_up))
    Mul(g, Sigmoid(g), Linear(x, W_up))  with g = Linear(x, W_gate)   (any association)
either side optionally behind a Cast. The down projection stays a Linear. Runs before the QKV sibling merge
(qkv.py), which would otherwise merge the gate and up projections as two siblings of x.
Lowers to templates/*/swiglu_epilogue.py.j2.
"""
from __future__ import annotations

from eetjit.ir import Graph, Node
from eetjit.rewrite.pattern import Const, Either, Flat, Match, Op, Skip, Var
from eetjit.rewrite.rule import Rule, emit
from eetjit.rewrite.rules.linear import drop_dead

TEMPLATE = "swiglu_epilogue"
_NO_SPLIT = lambda s: not s  # noqa: E731


def _linear(name: str, weight: str, activation: str):
    return Op("Linear", Var("x"), Const(weight), name=name, domain="eet", partial=True,
              attrs={"activation": lambda a, want=activation: (a or "none") == want, "split": _NO_SPLIT})


def _fused_gate_pattern():
    gate = Skip("Cast", _linear("gate", "W_gate", "silu"))
    up = Skip("Cast", _linear("up", "W_up", "none"))
    return Op("Mul", gate, up, name="root")


def _explicit_gate_pattern():
    g = Skip("Cast", Var("g"))
    up = Skip("Cast", _linear("up", "W_up", "none"))
    flat = Flat("Mul", g, Op("Sigmoid", g), up, name="root")                          # g·σ(g)·up, any order
    cast_silu = Op("Mul", Skip("Cast", Flat("Mul", g, Op("Sigmoid", g))), up, name="root")  # Cast(g·σ(g))·up
    return Either(flat, cast_silu)


def check(graph: Graph, m: Match) -> str | None:
    gate: Node | None = m.get("gate")
    if gate is None:  # the explicit form: g must itself be a plain Linear of x, read only by the SiLU
        g = m["g"]
        p = g.producer
        if p is None or p.domain != "eet" or p.op_type != "Linear" or p.inputs[0] is not m["x"]:
            return f"the SiLU input {g.name!r} is not a Linear of the up projection's input"
        if (p.attrs.get("activation") or "none") != "none" or p.attrs.get("split") or not p.inputs[1].is_const:
            return f"the gate Linear {p.name!r} already has an epilogue or a split"
        covered = {id(n) for n in m.covered}
        if graph.is_output(g):
            return f"the gate projection {g.name!r} is a graph output"
        for u in g.users:
            if id(u) not in covered:
                return f"the gate projection {g.name!r} is also used by {u.name!r} ({u.op_type})"
        gate = p
    Wg, Wu = gate.inputs[1].const, m.const("W_up")
    if Wg.ndim != 2 or Wu.ndim != 2 or Wg.shape != Wu.shape:
        return f"gate weight {list(Wg.shape)} and up weight {list(Wu.shape)} are not both [K, F]"
    if Wg.dtype != Wu.dtype:
        return f"gate weight is {Wg.dtype}, up weight {Wu.dtype}"
    for name, node in (("gate", gate), ("up", m["up"])):
        b = node.input(2)
        if b is not None and not b.is_const:
            return f"the {name} bias {b.name!r} is not a constant"
    out, y_up = m["root"].outputs[0], m["up"].outputs[0]
    if out.dtype is not None and y_up.dtype is not None and out.dtype != y_up.dtype:
        return f"the product is {out.dtype} but the projections are {y_up.dtype} (a precision change, not SwiGLU)"
    return None


def rewrite(graph: Graph, m: Match) -> None:
    root, up = m["root"], m["up"]
    gate = m.get("gate") or m["g"].producer
    inputs = [m["x"], gate.inputs[1], up.inputs[1], gate.input(2), up.input(2)]
    emit(graph, m, root, "SwiGLU", inputs, {}, [root.outputs[0]])
    drop_dead(graph, list(m.covered) + [gate])


RULES = [
    Rule("SwiGLU/silu-linear", "SwiGLU", _fused_gate_pattern(), check, rewrite, template=TEMPLATE),
    Rule("SwiGLU/explicit-silu", "SwiGLU", _explicit_gate_pattern(), check, rewrite, root_ops=("Mul",),
         template=TEMPLATE),
]
