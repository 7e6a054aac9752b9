"""Head layouts: which [B, S, H*D] value a [B, H, S, D]-style operand is a view of, checked by probing.

Exporters split and merge heads with many spellings: constant or computed (Shape/Gather/Concat) reshape
targets, -1 and 0 entries, merged transposes ([0, 2, 3, 1] for K^T), the sdpa decomposition's
[B*H, S, D] round trips, repeat_kv's Unsqueeze/Expand/Reshape for grouped-query attention. All of them are
*views*: each output element is one element of the source. So instead of interpreting each op symbolically,
`walk_up` collects the chain of view ops (and scalar scale factors) above an operand, and `trace` feeds
index codes (1, 2, 3, ... over the source [B, S, N]) through the real chain with the reference kernels; the
codes that arrive say exactly which source element sits where, and `match_heads` names the layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.rules._probe import Probe, ProbeError, data_input

VIEW_OPS = ("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Identity")


def float_cast(node: Node) -> bool:
    if node.op_type != "Cast" or node.domain != "":
        return False
    from eetjit.frontend.convert import np_dtype
    to = node.attrs.get("to")
    dt = np_dtype(to) if isinstance(to, int) else None
    return dt is not None and dt.kind == "f"


def scalar_factor(node: Node) -> float | None:
    """The factor of a Mul/Div by a one-element constant (x*c, c*x, x/c), else None."""
    if node.domain != "" or node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is None or b is None:
        return None
    if node.op_type == "Mul":
        for c, x in ((a, b), (b, a)):
            if c.is_const and c.const.size == 1 and not x.is_const and c.const.dtype.kind == "f":
                return float(c.const.reshape(-1)[0])
        return None
    if b.is_const and b.const.size == 1 and not a.is_const and b.const.dtype.kind == "f":
        d = float(b.const.reshape(-1)[0])
        return None if d == 0 else 1.0 / d
    return None


@dataclass
class Chain:
    top: Value                       # the operand as consumed (e.g. q in [B, H, S, D])
    source: Value                    # the value the views start from
    nodes: list[Node] = field(default_factory=list)    # view/scale/cast nodes, source side first
    factor: float = 1.0              # product of the scalar factors on the way
    identity: set[int] = field(default_factory=set)   # ids of nodes a code probe passes through


def walk_up(v: Value, stop: set[int] = frozenset()) -> Chain:
    """Follow view ops, float Casts and scalar scales up from `v` to the first value something else made."""
    nodes: list[Node] = []
    factor, identity = 1.0, set()
    cur = v
    while True:
        n = cur.producer
        if n is None or n.domain != "" or id(n) in stop:
            break
        if n.op_type in VIEW_OPS and n.inputs and n.inputs[0] is not None and not n.inputs[0].is_const:
            nodes.append(n)
            cur = n.inputs[0]
            continue
        if float_cast(n):
            nodes.append(n)
            identity.add(id(n))
            cur = n.inputs[0]
            continue
        f = scalar_factor(n)
        if f is not None:
            nodes.append(n)
            identity.add(id(n))
            factor *= f
            cur = data_input(n)
            continue
        break
    return Chain(v, cur, nodes[::-1], factor, identity)


def walk_down(graph: Graph, v: Value) -> list[Node]:
    """The single-consumer view ops below `v` (Shape/Size readers aside), in order."""
    nodes = []
    cur = v
    while not graph.is_output(cur):
        data_users = [u for u in cur.users if u.op_type not in ("Shape", "Size")]
        if len(data_users) != 1:
            break
        u = data_users[0]
        if u.domain != "" or not (u.op_type in VIEW_OPS or float_cast(u)) or u.inputs[0] is not cur:
            break
        nodes.append(u)
        cur = u.outputs[0]
    return nodes


def codes(shape) -> np.ndarray:
    """1, 2, 3, ... in `shape` (int64): every element names its own position."""
    return np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)


def source_codes(probe: Probe, src: Value, what: str) -> np.ndarray:
    """Codes for a [B, S, N] source; raises ProbeError when `src` is not [B, S, N] at the probe."""
    B, S = probe.cfg.B, probe.cfg.S
    shape = probe.shape(src)
    if len(shape) != 3 or shape[0] != B or shape[1] != S:
        raise ProbeError(f"{what} comes from {src.name!r} of shape {list(shape)} at the probe "
                         f"(B={B}, S={S}), not a [B, S, heads*head_dim] value")
    return codes(shape)


def head_view(src_codes: np.ndarray, D: int, layout: str, rep: int = 1) -> np.ndarray:
    """What a [B, S, Hs*D] source looks like split into heads (each repeated `rep` times, kv head major):
    layout BHSD = [B, H, S, D], BHDS = [B, H, D, S] (K^T), BSHD = [B, S, H, D]."""
    B, S, N = src_codes.shape
    x = src_codes.reshape(B, S, N // D, D)
    if layout == "BSHD":
        return np.repeat(x, rep, axis=2)
    x = x.transpose(0, 2, 1, 3) if layout == "BHSD" else x.transpose(0, 2, 3, 1)
    return np.repeat(x, rep, axis=1)


def match_heads(arr: np.ndarray, src_codes: np.ndarray, layout: str, reps=(1,)) -> tuple[int, int, int] | None:
    """(heads in source, head_dim, rep) when `arr` is the head-split view of `src_codes` in `layout`
    ([B, H, ., .] or, for BHSD/BHDS, the merged [B*H, ., .]); None otherwise."""
    B, S, N = src_codes.shape
    if arr.ndim not in (3, 4):
        return None
    D = arr.shape[-2] if layout == "BHDS" else arr.shape[-1]
    if D <= 0 or N % D:
        return None
    for rep in reps:
        want = head_view(src_codes, D, layout, rep)
        ok_shapes = [want.shape]
        if layout != "BSHD":
            ok_shapes.append((want.shape[0] * want.shape[1],) + want.shape[2:])
        if arr.shape in ok_shapes and np.array_equal(arr.reshape(want.shape), want):
            return N // D, D, rep
    return None


def merged_view(out_codes_BHSD: np.ndarray) -> np.ndarray:
    """[B, H, S, D] merged back to [B, S, H*D]."""
    B, H, S, D = out_codes_BHSD.shape
    return out_codes_BHSD.transpose(0, 2, 1, 3).reshape(B, S, H * D)


def is_merged(arr: np.ndarray, want_BSE: np.ndarray) -> int:
    """3 when `arr` is want_BSE as [B, S, E], 2 when as [B*S, E], 0 otherwise."""
    B, S, E = want_BSE.shape
    if arr.shape == (B, S, E) and np.array_equal(arr, want_BSE):
        return 3
    if arr.shape == (B * S, E) and np.array_equal(arr.reshape(B, S, E), want_BSE):
        return 2
    return 0


def plumbing_closure(graph: Graph, covered: list[Node]) -> list[Node]:
    """Shape plumbing hanging off covered values (Shape/Size readers and what they feed) that is used only by
    covered nodes or by itself: it dies with the match, so it belongs to it. Plumbing that also feeds
    something else is left out (the driver then names the covered value it keeps alive)."""
    cov = {id(n) for n in covered}
    closure: dict[int, Node] = {}
    todo = [u for n in covered for o in n.outputs for u in o.users
            if id(u) not in cov and u.op_type in ("Shape", "Size")]
    while todo:
        n = todo.pop()
        if id(n) not in closure and id(n) not in cov:
            closure[id(n)] = n
            todo.extend(u for o in n.outputs for u in o.users)
    inside = cov | set(closure)
    bad = {i for i, n in closure.items()
           if any(graph.is_output(o) or any(id(u) not in inside for u in o.users) for o in n.outputs)}
    changed = bool(bad)
    while changed:  # a node feeding a leaking node stays alive too
        changed = False
        for i, n in closure.items():
            if i not in bad and any(id(u) in bad for o in n.outputs for u in o.users):
                bad.add(i)
                changed = True
    return [n for i, n in closure.items() if i not in bad]
