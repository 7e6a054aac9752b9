"""Fused QKV projection: one eet.Linear with `split` whose outputs are q, k and v.

    GPT-2   Split(Linear(x, W[K, 3E]), axis=-1)            → Linear(x, W, split=[E, E, E])   (3 outputs)
            (sizes from the `split` input/attribute, `num_outputs`, or equal parts; or one Slice per part)
    BERT,   Linear(x, Wq), Linear(x, Wk), Linear(x, Wv)     → Linear(x, [Wq|Wk|Wv], split=[Nq, Nk, Nv])
    LLaMA   (GQA: k, v narrower than q)
The sibling merge takes every group of two or more plain Linears (no activation, no split) reading the same
x: in a transformer those are the attention projections, since the MLP's gate/up pair has become an
eet.SwiGLU by then (swiglu.py runs first) and every other projection reads a value of its own. Merging is
exact: each output column is the same dot product as before. Lowers to templates/*/linear_epilogue.py.j2.
"""
from __future__ import annotations

import numpy as np

from eetjit.ir import Graph, Node
from eetjit.rewrite.pattern import Const, Match, Op, Var
from eetjit.rewrite.rule import Rule, emit
from eetjit.rewrite.rules.linear import drop_dead, is_linear, slice_params

TEMPLATE = "linear_epilogue"
INT_MAX = 2**62


def _last_axis(axis: int, rank: int | None) -> bool:
    return axis == -1 or (rank is not None and axis == rank - 1)


def _out_rank(lin: Node) -> int | None:
    y = lin.outputs[0]
    return y.rank if y.rank is not None else lin.inputs[0].rank


# --- Split(Linear) -------------------------------------------------------------------------------------------

def _split_pattern():
    lin = Op("Linear", Var("x"), Const("W"), name="lin", domain="eet", partial=True,
             attrs={"split": lambda s: not s})
    return Op("Split", lin, name="root", partial=True)


def _split_sizes(graph: Graph, root: Node, N: int) -> tuple[list[int] | None, str | None]:
    n = len(root.outputs)
    s = root.input(1)
    if s is not None:
        if not s.is_const:
            return None, f"Split sizes {s.name!r} are not a constant"
        sizes = [int(d) for d in np.asarray(s.const).reshape(-1)]
    elif root.attrs.get("split") is not None:
        sizes = [int(d) for d in root.attrs["split"]]
    elif root.attrs.get("num_outputs") is not None:
        k = int(root.attrs["num_outputs"])
        chunk = -(-N // k)
        sizes = [min(chunk, max(N - i * chunk, 0)) for i in range(k)]
    else:
        if N % n:
            return None, f"Split into {n} equal parts of N={N} does not divide evenly"
        sizes = [N // n] * n
    if len(sizes) != n or sum(sizes) != N or any(d <= 0 for d in sizes):
        return None, f"Split sizes {sizes} are not {n} positive parts of N={N}"
    return sizes, None


def check_split(graph: Graph, m: Match) -> str | None:
    root, lin = m["root"], m["lin"]
    if not _last_axis(int(root.attrs.get("axis", 0)), _out_rank(lin)):
        return f"Split along axis {root.attrs.get('axis', 0)}, not the last (feature) axis"
    _, why = _split_sizes(graph, root, m.const("W").shape[-1])
    return why


def rewrite_split(graph: Graph, m: Match) -> None:
    root, lin = m["root"], m["lin"]
    sizes, _ = _split_sizes(graph, root, m.const("W").shape[-1])
    emit(graph, m, root, "Linear", list(lin.inputs), {**lin.attrs, "split": sizes}, list(root.outputs))
    drop_dead(graph, m.covered)


# --- Slice, Slice, Slice (Linear) ----------------------------------------------------------------------------

def _slice_range(sl: Node, rank: int | None, N: int) -> tuple[int, int] | None:
    """[start, end) of a step-1 Slice along the last axis, or None."""
    params = slice_params(sl)
    if params is None:
        return None
    starts, ends, axes, steps = params
    if len(starts) != 1:
        return None
    if axes is None:
        axes = [0]
    if len(axes) != 1 or not _last_axis(axes[0], rank) or (steps is not None and steps != [1]):
        return None
    s, e = starts[0], min(ends[0], INT_MAX)
    s, e = (s + N if s < 0 else s), (e + N if e < 0 else e)
    return max(0, min(s, N)), max(0, min(e, N))


def slices_pattern(graph: Graph, node: Node) -> Match | str | None:
    if not is_linear(node) or node.attrs.get("split") or len(node.outputs) != 1 or not node.inputs[1].is_const:
        return None
    y = node.outputs[0]
    users = list({id(u): u for u in y.users}.values())
    if len(users) < 2 or not all(u.op_type == "Slice" and u.domain == "" for u in users):
        return None
    if graph.is_output(y):
        return f"the fused projection {y.name!r} is also a graph output"
    N, rank = node.inputs[1].const.shape[-1], _out_rank(node)
    ranges = []
    for u in users:
        r = _slice_range(u, rank, N)
        if r is None:
            return f"Slice {u.name!r} is not a step-1 slice of the last axis with constant bounds"
        ranges.append((r, u))
    ranges.sort(key=lambda t: t[0])
    at = 0
    for (s, e), u in ranges:
        if s != at or e <= s:
            return f"the slices do not cut [0, {N}) into consecutive parts (Slice {u.name!r} takes [{s}, {e}))"
        at = e
    if at != N:
        return f"the slices cover [0, {at}) of N={N}"
    return Match(nodes={"root": node, **{f"part{i}": u for i, (_, u) in enumerate(ranges)}})


def rewrite_slices(graph: Graph, m: Match) -> None:
    lin = m["root"]
    parts = [m[f"part{i}"] for i in range(sum(k.startswith("part") for k in m.nodes))]
    ranges = [_slice_range(p, _out_rank(lin), lin.inputs[1].const.shape[-1]) for p in parts]
    emit(graph, m, lin, "Linear", list(lin.inputs), {**lin.attrs, "split": [e - s for s, e in ranges]},
         [p.outputs[0] for p in parts])
    drop_dead(graph, parts + [lin])


# --- sibling Linears of one x --------------------------------------------------------------------------------

def _mergeable(node: Node) -> bool:
    if not is_linear(node, plain=True) or len(node.outputs) != 1:
        return False
    W, b = node.inputs[1], node.input(2)
    return W is not None and W.is_const and W.const.ndim == 2 and (b is None or b.is_const)


def siblings_pattern(graph: Graph, node: Node) -> Match | str | None:
    if not _mergeable(node):
        return None
    x = node.inputs[0]
    sibs = [u for u in {id(u): u for u in x.users}.values() if _mergeable(u) and u.inputs[0] is x]
    if len(sibs) < 2:
        return None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    sibs.sort(key=lambda n: order[id(n)])
    if sibs[0] is not node:
        return None  # the group is handled at its first member
    W0 = node.inputs[1].const
    for s in sibs[1:]:
        W = s.inputs[1].const
        if W.shape[0] != W0.shape[0] or W.dtype != W0.dtype:
            return f"sibling projections of {x.name!r} differ: {s.name!r} is {W.dtype}{list(W.shape)}, " \
                   f"{node.name!r} {W0.dtype}{list(W0.shape)}"
        b = s.input(2)
        if b is not None and (b.const.shape != (W.shape[1],) or b.const.dtype != W.dtype):
            return f"the bias of {s.name!r} is {b.const.dtype}{list(b.const.shape)}, not [{W.shape[1]}]"
    b0 = node.input(2)
    if b0 is not None and (b0.const.shape != (W0.shape[1],) or b0.const.dtype != W0.dtype):
        return f"the bias of {node.name!r} is {b0.const.dtype}{list(b0.const.shape)}, not [{W0.shape[1]}]"
    return Match(values={"x": x}, nodes={"root": node, **{f"part{i}": s for i, s in enumerate(sibs)}})


def rewrite_siblings(graph: Graph, m: Match) -> None:
    parts = [m[f"part{i}"] for i in range(sum(k.startswith("part") for k in m.nodes))]
    Ws = [p.inputs[1].const for p in parts]
    W_KN = np.ascontiguousarray(np.concatenate(Ws, axis=1))
    inputs = [m["x"], graph.constant(W_KN, name="_".join(["qkv_weight"] + [p.inputs[1].name for p in parts[:1]]))]
    if any(p.input(2) is not None for p in parts):
        bias_N = np.concatenate([p.input(2).const if p.input(2) is not None else np.zeros(W.shape[1], W.dtype)
                                 for p, W in zip(parts, Ws)])
        inputs.append(graph.constant(bias_N, name=f"qkv_bias_{parts[0].inputs[1].name}"))
    emit(graph, m, m["root"], "Linear", inputs, {"activation": "none", "split": [W.shape[1] for W in Ws]},
         [p.outputs[0] for p in parts])
    drop_dead(graph, parts)


RULES = [
    Rule("QKV/Split", "Linear", _split_pattern(), check_split, rewrite_split, template=TEMPLATE),
    Rule("QKV/Slices", "Linear", slices_pattern, lambda g, m: None, rewrite_slices, root_ops=("Linear",),
         template=TEMPLATE),
    Rule("QKV/siblings", "Linear", siblings_pattern, lambda g, m: None, rewrite_siblings, root_ops=("Linear",),
         template=TEMPLATE),
]
