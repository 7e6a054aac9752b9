"""Rotary position embedding (rotate-half form) → eet.Rotary. Lowers to templates/*/rotary.py.j2.

Decomposed, as HF LLaMA-style models export it, on the head-split q or k (x_BHSD, or x_BSHD):
    y = x * cos + Concat(-x[..., D/2:], x[..., :D/2]) * sin          (Slice or Split, Neg or Mul by -1)
with cos/sin = cos/sin(Concat(f, f)) * attention_scaling, f = positions ⊗ inv_freq, broadcast over heads.
ONNX RotaryEmbedding (opset 23) with interleaved=0 and the full head dim is the same thing.

The cos/sin subgraphs are recognised by meaning: their integer positions (the value cast to float on the way)
and the [D/2] inv_freq constant are found in their ancestry, then probing checks that they compute
cos/sin(positions * inv_freq) (each half repeated) times one scaling factor. The fused op reads the
[B, S, H*D] projection the head split started from; Reshape/Transpose views put the result back in the
layout the rest of the graph expects (the attention rule sees through them).
"""
from __future__ import annotations

import numpy as np

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.pattern import Const, Either, Match, Op, Var
from eetjit.rewrite.rule import Rule, _take_name
from eetjit.rewrite.rules import _layout
from eetjit.rewrite.rules._layout import float_cast
from eetjit.rewrite.rules._probe import (BOTH, LAYOUT_CONFIG, ProbeError, base_probe, cache, data_ancestry,
                                         weight_reader)

TEMPLATE = "rotary"


def _decomposed_pattern():
    x = Var("x")
    lo = Either(Op("Slice", x, partial=True, name="lo"), Op("Split", x, partial=True, out=0, name="split"))
    hi = Either(Op("Slice", x, partial=True, name="hi"), Op("Split", x, partial=True, out=1, name="split"))
    neg = Either(Op("Neg", hi, name="neg"), Op("Mul", hi, Const("minus_one"), name="neg"))
    rot = Op("Concat", neg, lo, name="cat")
    return Op("Add", Op("Mul", x, Var("cos"), name="mul_cos"), Op("Mul", rot, Var("sin"), name="mul_sin"),
              name="root")


# --- shared analysis ------------------------------------------------------------------------------------------

def _x_layout(graph: Graph, x: Value, num_heads: int | None = None):
    """(source, layout, H, D, source codes, child probe) for the rotated operand `x`, or a reason.
    layout: BHSD / BSHD (head-split views of a [B, S, H*D] source) or BSE (x is that source)."""
    probe = base_probe(graph, LAYOUT_CONFIG)
    chain = _layout.walk_up(x)
    if chain.factor != 1.0:
        return f"the rotated value is scaled by {chain.factor:g} on its way from {chain.source.name!r}"
    cx = _layout.source_codes(probe, chain.source, "the rotated value")
    child = probe.child({chain.source: cx}, chain.identity)
    ax = child.value(x)
    if ax.ndim == 3:
        if not num_heads or not np.array_equal(ax, cx) or cx.shape[-1] % num_heads:
            return f"the rotated value {x.name!r} is 3-D but not a [B, S, H*D] projection with known heads"
        return chain.source, "BSE", num_heads, cx.shape[-1] // num_heads, cx, child
    for layout in ("BHSD", "BSHD"):
        found = _layout.match_heads(ax, cx, layout)
        if found is not None and ax.ndim == 4:
            H, D, _ = found
            return chain.source, layout, H, D, cx, child
    return (f"the rotated value {x.name!r} is not a head split of {chain.source.name!r} "
            f"(shape {list(ax.shape)} at the probe)")


def _per_token(arr: np.ndarray, layout: str, B: int, S: int, H: int, W: int):
    """A cos/sin value as consumed, reduced to [B, S, W] (it must not vary over heads)."""
    try:
        if layout == "BHSD":
            full = np.broadcast_to(arr, (B, H, S, W))
            tok = full[:, 0]
            same = np.array_equal(full, np.broadcast_to(tok[:, None], full.shape))
        elif layout == "BSHD":
            full = np.broadcast_to(arr, (B, S, H, W))
            tok = full[:, :, 0]
            same = np.array_equal(full, np.broadcast_to(tok[:, :, None], full.shape))
        else:
            tok, same = np.broadcast_to(arr, (B, S, W)), True
    except ValueError:
        return f"cos/sin of shape {list(np.shape(arr))} do not broadcast over the rotated [B, H, S, D] value"
    if not same:
        return "cos/sin differ between heads"
    return np.asarray(tok, np.float64)


def _angles(graph: Graph, cos: Value, sin: Value, layout: str, H: int, D: int, doubled: bool):
    """(positions value, reshape target to [B|1, S], inv_freq [D/2], scaling) or a reason."""
    half = D // 2
    pos_vals: dict[int, Value] = {}
    inv: list[np.ndarray] = []
    base = base_probe(graph, LAYOUT_CONFIG)
    for v in (cos, sin):
        nodes, leaves = data_ancestry(v)
        reader = weight_reader(nodes)
        if reader is not None:
            return f"{v.name!r} depends on activations ({reader.name!r} reads a weight)"
        for leaf in leaves:
            if not any(leaf is i for i in graph.inputs):
                return f"{v.name!r} depends on {leaf.name!r}, which no node produces"
        for n in nodes:
            if float_cast(n) and n.inputs[0] is not None and not n.inputs[0].is_const:
                if base.value(n.inputs[0]).dtype.kind in "iu":
                    pos_vals[id(n.inputs[0])] = n.inputs[0]
            for c in n.inputs:
                if c is not None and c.is_const and c.const.dtype.kind == "f" and c.const.size == half \
                        and half > 1 and sum(1 for d in c.const.shape if d > 1) == 1:
                    if not any(np.array_equal(c.const.reshape(-1), a) for a in inv):
                        inv.append(c.const.reshape(-1))
    if len(pos_vals) != 1:
        return (f"cos/sin are computed from {len(pos_vals)} integer position values "
                f"({', '.join(v.name for v in pos_vals.values()) or 'none'}), not one")
    if len(inv) != 1:
        return f"cos/sin use {len(inv)} constants of {half} frequencies, not one inv_freq"
    P = next(iter(pos_vals.values()))
    inv_freq = inv[0].astype(np.float32)
    target = None
    scaling = None
    for cfg in (LAYOUT_CONFIG, BOTH):
        probe = base_probe(graph, cfg)
        B, S = cfg.B, cfg.S
        pos = probe.value(P)
        if pos.size == S:
            t = (1, -1)
        elif pos.size == B * S and pos.ndim >= 2 and pos.shape[0] == B:
            t = (0, -1)
        else:
            return f"positions {P.name!r} of shape {list(pos.shape)} are not [B|1, S]"
        if target is not None and t != target:
            return f"positions {P.name!r} change from [1, S] to [B, S] with the batch"
        target = t
        pos_BS = pos.reshape(1 if t[0] == 1 else B, S).astype(np.float32)
        angle = pos_BS[:, :, None] * inv_freq[None, None, :]
        if doubled:
            angle = np.concatenate([angle, angle], axis=-1)
        W = angle.shape[-1]
        e_cos = np.broadcast_to(np.cos(angle.astype(np.float64)), (B, S, W))
        e_sin = np.broadcast_to(np.sin(angle.astype(np.float64)), (B, S, W))
        got_cos = _per_token(probe.value(cos), layout, B, S, H, W)
        got_sin = _per_token(probe.value(sin), layout, B, S, H, W)
        for g in (got_cos, got_sin):
            if isinstance(g, str):
                return g
        if scaling is None:
            scaling = float(np.float32(np.sum(got_cos * e_cos) / max(np.sum(e_cos * e_cos), 1e-30)))
        tol = 1e-5 * max(1.0, abs(scaling))
        if not (np.allclose(got_cos, scaling * e_cos, rtol=1e-4, atol=tol)
                and np.allclose(got_sin, scaling * e_sin, rtol=1e-4, atol=tol)):
            return (f"cos/sin are not cos/sin(positions * inv_freq){' (halves repeated)' if doubled else ''} "
                    f"times a scaling")
    return P, target, inv_freq, scaling


def _emit(graph: Graph, root: Node, src: Value, positions: Value, target, inv_freq: np.ndarray,
          H: int, D: int, scaling: float, layout: str, replaced: Value) -> None:
    c = cache(graph)
    pos_cache = c.setdefault("rotary_positions", {})
    key = (positions, target)
    pos = pos_cache.get(key)
    if pos is None or pos.producer is None:
        shape_c = graph.constant(np.array(target, np.int64), "rotary_positions_shape")
        pos = graph.value("rotary_positions", np.int64, (None, None))
        graph.add_node("Reshape", [positions, shape_c], [pos], before=root)
        pos_cache[key] = pos
    inv_cache = c.setdefault("rotary_inv_freq", {})
    inv = inv_cache.get(inv_freq.tobytes())
    if inv is None or graph.values.get(inv.name) is not inv:
        inv = graph.constant(inv_freq.astype(np.float32), "rotary_inv_freq")
        inv_cache[inv_freq.tobytes()] = inv
    y = graph.value("rotary_out", src.dtype, src.shape)
    graph.add_node("Rotary", [src, pos, inv], [y], {"num_heads": H, "head_dim": D, "scaling": float(scaling)},
                   domain="eet", name=graph.fresh_name("Rotary"), before=root)
    new = y
    if layout in ("BHSD", "BSHD"):
        heads = graph.constant(np.array([0, 0, H, D], np.int64), "rotary_heads_shape")
        shp = src.shape[:2] if src.shape is not None and len(src.shape) == 3 else (None, None)
        split = graph.value("rotary_heads", src.dtype, (*shp, H, D))
        graph.add_node("Reshape", [y, heads], [split], before=root)
        new = split
        if layout == "BHSD":
            new = graph.value("rotary_heads_t", src.dtype, (shp[0], H, shp[1], D))
            graph.add_node("Transpose", [split], [new], {"perm": [0, 2, 1, 3]}, before=root)
    graph.replace_all_uses(replaced, new)
    if graph.is_output(new):
        _take_name(graph, replaced, new)


# --- decomposed (rotate_half) ---------------------------------------------------------------------------------

def check_decomposed(graph: Graph, m: Match) -> str | None:
    x = m["x"]
    if m.get("minus_one") is not None and not np.allclose(m.const("minus_one"), -1.0):
        return f"rotate_half multiplies by {m.const('minus_one').reshape(-1)[:1]}, not -1"
    try:
        found = _x_layout(graph, x)
        if isinstance(found, str):
            return found
        src, layout, H, D, cx, child = found
        if D % 2:
            return f"odd head dim {D}"
        ax = child.value(x)
        rot = child.value(m["cat"].outputs[0])
        want = np.concatenate([-ax[..., D // 2:], ax[..., :D // 2]], axis=-1)
        if rot.shape != want.shape or not np.array_equal(rot, want):
            return "the Concat is not rotate_half(x) = [-x2, x1] over the head dim"
        ang = _angles(graph, m["cos"], m["sin"], layout, H, D, doubled=True)
    except ProbeError as e:
        return str(e)
    if isinstance(ang, str):
        return ang
    m.info = (src, layout, H, D) + ang
    return None


def rewrite_decomposed(graph: Graph, m: Match) -> None:
    src, layout, H, D, P, target, inv_freq, scaling = m.info
    root = m["root"]
    _emit(graph, root, src, P, target, inv_freq, H, D, scaling, layout, root.outputs[0])


# --- ONNX RotaryEmbedding --------------------------------------------------------------------------------------

def _onnx_match(graph: Graph, node: Node):
    if node.domain != "":
        return None
    if int(node.attrs.get("interleaved", 0)):
        return "interleaved RotaryEmbedding (even/odd pairs) is not eet.Rotary's rotate-half form"
    m = Match()
    m.covered = [node]
    m.nodes = {"root": node}
    return m


def check_onnx(graph: Graph, m: Match) -> str | None:
    node = m["root"]
    x, cos, sin = node.inputs[0], node.input(1), node.input(2)
    pids = node.input(3)
    try:
        found = _x_layout(graph, x, int(node.attrs.get("num_heads", 0) or 0))
        if isinstance(found, str):
            return found
        src, layout, H, D, cx, child = found
        if layout == "BSHD":
            return "4-D RotaryEmbedding input must be [B, H, S, D]"
        rdim = int(node.attrs.get("rotary_embedding_dim", 0) or 0)
        if rdim not in (0, D):
            return f"partial rotary (rotary_embedding_dim {rdim} of head dim {D}) is not eet.Rotary"
        if pids is None:
            ang = _angles(graph, cos, sin, "BSE", H, D, doubled=False)
        else:
            ang = _from_tables(cos, sin, pids, D)
    except ProbeError as e:
        return str(e)
    if isinstance(ang, str):
        return ang
    m.info = (src, layout, H, D) + ang
    return None


def _from_tables(cos: Value, sin: Value, pids: Value, D: int):
    """cos/sin caches [max_pos, D/2] indexed by position_ids: inv_freq from the phase slope."""
    if not (cos.is_const and sin.is_const) or cos.const.ndim != 2 or cos.const.shape != sin.const.shape:
        return "RotaryEmbedding caches indexed by position_ids are not constant [max_pos, D/2] tables"
    c, s = cos.const.astype(np.float64), sin.const.astype(np.float64)
    if c.shape[1] != D // 2 or c.shape[0] < 2:
        return f"RotaryEmbedding cache of shape {list(c.shape)} does not fit head dim {D}"
    scaling = float(np.hypot(c[0], s[0]).mean())
    phase = np.unwrap(np.arctan2(s, c), axis=0)                       # [P, D/2]
    p = np.arange(c.shape[0], dtype=np.float64)[:, None]
    inv_freq = (np.sum(phase * p, axis=0) / np.sum(p * p)).astype(np.float32)
    angle = np.arange(c.shape[0], dtype=np.float32)[:, None] * inv_freq[None]
    if not (np.allclose(c, scaling * np.cos(angle), atol=1e-4) and np.allclose(s, scaling * np.sin(angle), atol=1e-4)):
        return "RotaryEmbedding caches are not cos/sin(position * inv_freq)"
    return pids, (0, -1), inv_freq, scaling


def rewrite_onnx(graph: Graph, m: Match) -> None:
    src, layout, H, D, P, target, inv_freq, scaling = m.info
    root = m["root"]
    _emit(graph, root, src, P, target, inv_freq, H, D, scaling, layout, root.outputs[0])


RULES = [
    Rule("Rotary/RotaryEmbedding", "Rotary", _onnx_match, check_onnx, rewrite_onnx, root_ops=("RotaryEmbedding",),
         template=TEMPLATE),
    Rule("Rotary/rotate_half", "Rotary", _decomposed_pattern(), check_decomposed, rewrite_decomposed,
         template=TEMPLATE),
]
