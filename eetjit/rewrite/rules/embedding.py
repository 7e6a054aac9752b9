"""Embedding: the table lookups at the bottom of the model (+ BERT's LayerNorm) → eet.Embedding.

    GPT-2:  wte[ids] + wpe[positions]                                   → Embedding(ids, positions, wte, wpe)
    BERT:   LayerNorm(wte[ids] + wtt[type_ids] + wpe[positions])        → Embedding(ids, positions, wte, wpe,
                                                                              type_ids, wtt, gamma, beta)
    LLaMA:  wte[ids]                                                    → Embedding(ids, None, wte)
Each lookup is `Gather(table, indices)` (axis 0); the sums come in any order and association, each lookup
optionally behind a no-op Cast. Which lookup is which is read from the indices: the token ids (and the token
types) come from graph inputs, the positions are computed (a Range, or a Slice of a position buffer) — that
subgraph stays as plain ops and its value is the `positions` operand; of two input-fed tables the one named
like token types (else the smaller) holds the types.

The TorchScript exporter computes the positions from `Shape(wte[ids])`; such Shape users of a lookup are
rewired to `Concat(Shape(ids), [E])` (the same value) so the lookup can be fused without a cycle.
Runs after LayerNorm (BERT's embedding LayerNorm is an eet.LayerNorm by then) and before the residual AddNorm
rules, which would otherwise take GPT-2's wte+wpe Add for a residual add. Lowers to templates/*/embedding.py.j2.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.pattern import Const, Flat, Match, Op, Skip, Var
from eetjit.rewrite.rule import Rule, emit

TEMPLATE = "embedding"
_PASS_THROUGH = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand")
_LOOKUPS = ("gather0", "gather1", "gather2")


def _gather(i: int):
    return Op("Gather", Const(f"table{i}"), Var(f"idx{i}"), name=f"gather{i}")


def _sum_of_lookups(n: int, name: str = "root"):
    return Flat("Add", *[Skip("Cast", _gather(i)) for i in range(n)], name=name)


def _with_norm(n: int):
    """LayerNorm(sum of n lookups) — only when the sum feeds nothing else. When it does (GPT-2: the sum is
    also the first residual) the norm is the first layer's, not the embedding's: the plain-sum rule takes the
    lookups and this is no near miss."""
    pat = Op("LayerNorm", _sum_of_lookups(n, "sum"), Const("gamma"), name="root", partial=True, domain="eet")

    def find(graph: Graph, node: Node) -> Match | None:
        if node.domain != "eet":
            return None
        x = node.inputs[0]
        if x is None or len(x.users) != 1 or graph.is_output(x):
            return None
        return next(iter(pat.match(node.outputs[0], Match())), None)
    return find


def _token_lookup():
    """A lone lookup (LLaMA) — only by token ids: a table read by computed indices (a cos/sin cache read by
    position) is not an embedding, and no near miss either."""
    pat = _gather(0)

    def find(graph: Graph, node: Node) -> Match | None:
        if node.domain != "" or _token_source(graph, node.input(1)) is None:
            return None
        return next(iter(pat.match(node.outputs[0], Match())), None)
    return find


def _graph_input(graph: Graph, v: Value | None) -> Value | None:
    """The graph input `v` forwards (through reshapes and casts), or None when `v` is computed."""
    for _ in range(16):
        if v is None:
            return None
        if any(v is i for i in graph.inputs):
            return v
        p = v.producer
        if p is None or p.op_type not in _PASS_THROUGH or p.domain != "":
            return None
        v = p.inputs[0]
    return None


def _token_source(graph: Graph, v: Value | None) -> Value | None:
    """The graph input that feeds token ids or types to a lookup; None for computed indices and positions."""
    src = _graph_input(graph, v)
    return None if src is None or "position" in src.name.lower() else src


def _roles(graph: Graph, m: Match, n: int) -> tuple[dict[str, int], str | None]:
    """Which lookup is ids / positions / types: {"ids": i, "pos": j, "types": k}, or a reason.
    Token ids (and types) are read from graph inputs; positions are computed. Where that leaves two
    candidates for one role, the smaller table holds the token types (2 rows against hundreds)."""
    fed, computed = [], []
    for i in range(n):
        src = _token_source(graph, m[f"idx{i}"])
        if src is None:
            computed.append(i)
        else:
            fed.append((i, src))
    if not fed:
        return {}, "no lookup reads token ids from a graph input"
    if len(fed) > 2:
        return {}, f"{len(fed)} lookups read graph inputs; expected token ids and at most token types"
    rows = lambda i: m.const(f"table{i}").shape[0]  # noqa: E731
    roles = {}
    if len(fed) == 2:
        hint = [i for i, src in fed if "type" in src.name.lower() or "segment" in src.name.lower()]
        roles["types"] = hint[0] if len(hint) == 1 else min((i for i, _ in fed), key=rows)
        roles["ids"] = next(i for i, _ in fed if i != roles["types"])
    else:
        roles["ids"] = fed[0][0]
    if len(computed) == 2:     # BERT without a token_type_ids input reads a buffer of zeros
        roles["types"], roles["pos"] = sorted(computed, key=rows)
    elif computed:
        roles["pos"] = computed[0]
    return roles, None


def _shape_users(graph: Graph, m: Match, i: int) -> tuple[list[Node], str | None]:
    """Users of lookup i outside the match: Shape nodes (rewired in the rewrite), or the reason it can't fuse."""
    covered = {id(n) for n in m.covered}
    g = m[f"gather{i}"]
    out = g.outputs[0]
    if g is (m.nodes.get("root") or m["gather0"]):
        return [], None                          # the lookup is the fused value itself
    if graph.is_output(out):
        return [], f"intermediate {out.name!r} (Gather) is a graph output"
    shapes = []
    for u in out.users:
        if id(u) in covered:
            continue
        if u.op_type != "Shape" or u.domain != "" or "start" in u.attrs or "end" in u.attrs:
            return [], f"intermediate {out.name!r} (Gather) is also used by {u.name!r} ({u.op_type})"
        shapes.append(u)
    return shapes, None


def _depends_on(values: list[Value], nodes: set[int], skip: set[int]) -> bool:
    """Whether any of `values` is computed from one of `nodes` (not looking through the nodes in `skip`)."""
    stack, seen = [v for v in values if v is not None], set()
    while stack:
        p = stack.pop().producer
        if p is None or id(p) in seen or id(p) in skip:
            continue
        if id(p) in nodes:
            return True
        seen.add(id(p))
        stack.extend(v for v in p.inputs if v is not None)
    return False


def _make_check(n: int, with_norm: bool):
    def check(graph: Graph, m: Match) -> str | None:
        tables = [m.const(f"table{i}") for i in range(n)]
        for i, t in enumerate(tables):
            name = m[f"table{i}"].name
            if t.ndim != 2:
                return f"lookup table {name!r} is {t.ndim}-D, not [rows, E]"
            if t.dtype.kind != "f":
                return f"lookup table {name!r} is {t.dtype}, not float"
            g = m[f"gather{i}"]
            if g.attrs.get("axis", 0) != 0:
                return f"Gather {g.name!r} gathers along axis {g.attrs.get('axis')}, not the rows"
            idx = m[f"idx{i}"]
            if idx.dtype is not None and idx.dtype.kind not in "iu":
                return f"Gather {g.name!r} indices are {idx.dtype}, not integers"
        E, dt = tables[0].shape[1], tables[0].dtype
        for t in tables[1:]:
            if t.shape[1] != E or t.dtype != dt:
                return f"lookup tables disagree: {t.dtype}[{t.shape[1]}] vs {dt}[{E}]"
        for node in m.covered:
            if node.op_type == "Cast" and node.attrs.get("to") != helper.np_dtype_to_tensor_dtype(dt):
                return f"Cast {node.name!r} changes the embedding dtype"
        roles, why = _roles(graph, m, n)
        if why:
            return why
        ids = m[f"idx{roles['ids']}"]
        if ids.rank is not None and ids.rank != 2:
            return f"token ids have rank {ids.rank}, not [B, S]"
        for role in ("pos", "types"):
            if role in roles:
                v = m[f"idx{roles[role]}"]
                if v.rank is not None and ids.rank is not None and v.rank > ids.rank:
                    return f"{role} indices of rank {v.rank} do not broadcast to the token ids' [B, S]"
        if with_norm:
            root = m["root"]
            gamma, beta = m.const("gamma"), root.input(2)
            if gamma.shape != (E,):
                return f"LayerNorm gamma shape {gamma.shape} is not ({E},)"
            if beta is not None and (not beta.is_const or beta.const.shape != (E,)):
                return f"LayerNorm beta is not a constant of shape ({E},)"
        shapes = []
        for i in range(n):
            found, why = _shape_users(graph, m, i)
            if why:
                return why
            shapes += found
        operands = [m[f"idx{i}"] for i in range(n)]
        if _depends_on(operands, {id(c) for c in m.covered}, {id(s) for s in shapes}):
            return "the positions or ids are computed from the lookups themselves"
        return None
    return check


def _rewire_shape(graph: Graph, shape: Node, ids: Value, E: int) -> None:
    """Shape(table[ids]) → Concat(Shape(ids), [E]): the same value, not computed from the lookup."""
    ids_shape = graph.add_node("Shape", [ids], 1, name=graph.fresh_name(f"{shape.name}/ids"), before=shape)
    e = graph.constant(np.array([E], np.int64), name=f"{shape.name}/E")
    out = shape.outputs[0]
    new = graph.value(f"{out.name}/from_ids", np.int64, out.shape)
    graph.add_node("Concat", [ids_shape.outputs[0], e], [new], {"axis": 0}, before=shape)
    graph.replace_all_uses(out, new)


def _make_rewrite(n: int, with_norm: bool):
    def rewrite(graph: Graph, m: Match) -> None:
        roles, _ = _roles(graph, m, n)
        root = m.nodes.get("root") or m["gather0"]
        for i in range(n):
            for shape in _shape_users(graph, m, i)[0]:
                _rewire_shape(graph, shape, m[f"idx{i}"], m.const(f"table{i}").shape[1])
        pick = lambda role, what: m[f"{what}{roles[role]}"] if role in roles else None  # noqa: E731
        inputs = [pick("ids", "idx"), pick("pos", "idx"), pick("ids", "table"), pick("pos", "table"),
                  pick("types", "idx"), pick("types", "table")]
        attrs = {}
        if with_norm:
            inputs += [m["gamma"], root.input(2)]
            attrs["epsilon"] = float(root.attrs.get("epsilon", 1e-5))
        emit(graph, m, root, "Embedding", inputs, attrs, [root.outputs[0]])
    return rewrite


def _rule(name: str, n: int, with_norm: bool) -> Rule:
    if with_norm:
        pattern, roots = _with_norm(n), ("LayerNorm",)
    elif n == 1:
        pattern, roots = _token_lookup(), ("Gather",)
    else:
        pattern, roots = _sum_of_lookups(n), ("Add",)
    return Rule(f"Embedding/{name}", "Embedding", pattern, _make_check(n, with_norm), _make_rewrite(n, with_norm),
                root_ops=roots, template=TEMPLATE, allow_shared=_LOOKUPS)


RULES = [
    _rule("word+position+type+LayerNorm", 3, True),      # BERT
    _rule("word+position+LayerNorm", 2, True),
    _rule("word+position+type", 3, False),
    _rule("word+position", 2, False),                    # GPT-2
    _rule("word", 1, False),                             # LLaMA
]
