"""Residual add + norm: LayerNorm(a + b) → eet.AddLayerNorm, RMSNorm(a + b) → eet.AddRMSNorm.

The fused op returns the normalized value and the sum; the sum takes over the Add's other users (the next
residual add reads it), so the Add may be shared — it is the one intermediate `allow_shared` names. Runs last
in the table: by then the norms are eet ops, bias adds are inside Linears and GPT-2's wte+wpe add is inside
the Embedding, so what is left feeding a norm is the residual stream. The check still refuses a bias add (a
constant operand) and an embedding lookup, in case those rules did not fire.
Lowers to templates/*/add_layer_norm.py.j2 and add_rms_norm.py.j2.
"""
from __future__ import annotations

from eetjit.ir import Graph, Value
from eetjit.rewrite.pattern import Const, Match, Op, Var
from eetjit.rewrite.rule import Rule, emit


def _pattern(norm: str):
    add = Op("Add", Var("a"), Var("b"), name="add")
    return Op(norm, add, Const("gamma"), name="root", partial=True, domain="eet")


def _same_dim(d1, d2) -> bool:
    """False only when the dims provably differ (symbolic names may differ for equal sizes)."""
    if isinstance(d1, int) and isinstance(d2, int):
        return d1 == d2
    return not (d1 == 1 or d2 == 1)  # a literal 1 against a symbol broadcasts


def check(graph: Graph, m: Match) -> str | None:
    add, gamma = m["add"], m.const("gamma")
    E = gamma.shape[-1] if gamma.ndim else None
    for key in ("a", "b"):
        v: Value = m[key]
        if v.is_const:
            return f"Add {add.name!r} adds the constant {v.name!r} (a bias add, not a residual)"
        p = v.producer
        if p is not None and p.op_type == "Gather" and p.domain == "" and p.inputs[0] is not None \
                and p.inputs[0].is_const:
            return f"Add {add.name!r} reads the table lookup {v.name!r} (an embedding sum, not a residual)"
        if v.dtype is not None and v.dtype.kind != "f":
            return f"Add {add.name!r} adds {v.dtype} values, not a float residual"
        if v.shape is not None:
            if len(v.shape) < 2:
                return f"Add {add.name!r} operand {v.name!r} has rank {len(v.shape)}, not [B, S, E]"
            if not _same_dim(v.shape[-1], E):
                return f"Add {add.name!r} operand {v.name!r} has {v.shape[-1]} features, the norm {E}"
    a, b = m["a"], m["b"]
    if a.shape is not None and b.shape is not None:
        if len(a.shape) != len(b.shape) or not all(_same_dim(x, y) for x, y in zip(a.shape, b.shape)):
            return f"Add {add.name!r} broadcasts {list(a.shape)} with {list(b.shape)}, not two [B, S, E] activations"
    if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
        return f"Add {add.name!r} mixes {a.dtype} and {b.dtype}"
    return None


def _rewrite(fused: str):
    def rewrite(graph: Graph, m: Match) -> None:
        root, add = m["root"], m["add"]
        inputs = [m["a"], m["b"]] + list(root.inputs[1:])   # gamma (and beta for LayerNorm)
        emit(graph, m, root, fused, inputs, dict(root.attrs), [root.outputs[0], add.outputs[0]])
    return rewrite


RULES = [
    Rule("AddLayerNorm/residual", "AddLayerNorm", _pattern("LayerNorm"), check, _rewrite("AddLayerNorm"),
         allow_shared=("add",), template="add_layer_norm"),
    Rule("AddRMSNorm/residual", "AddRMSNorm", _pattern("RMSNorm"), check, _rewrite("AddRMSNorm"),
         allow_shared=("add",), template="add_rms_norm"),
]
