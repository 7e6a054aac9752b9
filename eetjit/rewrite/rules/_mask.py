"""Attention masks by meaning: which (query, key) pairs a mask subgraph lets through, found by probing.

Exports build the mask in many ways (a Where/Slice of a causal buffer, masking_utils' Range/LessOrEqual/And
graphs, SDPA's boolean masks turned into Where(mask, 0, -inf), the additive (1 - mask) * min). What matters is
the allowed matrix they produce. A mask *term* is a value applied to the scores (added, or the condition of a
Where that keeps the scores); its data must come only from constants and one [B, S] graph input (the
attention mask). `analyse` evaluates the terms on the probe batches of `_probe.MASK_CONFIGS` and compares the
allowed matrix, at the real (non-pad) query rows, with the two semantics eet.Attention implements:
padding only, or causal + padding (each also without padding, for models that ignore the mask input).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eetjit.fused.op_attention import pad_info
from eetjit.ir import Graph, Value
from eetjit.rewrite.rules._probe import (MASK_CONFIGS, ProbeError, base_probe, cache, data_ancestry,
                                         weight_reader)

NEG = -1e3  # a bias at or below this (after the scale that follows it) is "masked out": exp underflows to 0


@dataclass(frozen=True, eq=False)
class Term:
    kind: str                 # "add": value added to the scores; "where": condition of a Where keeping them;
                              # "auto": a bool value is a "where" condition, a float one is added (ONNX Attention)
    value: Value
    factor: float = 1.0       # positive scale applied to the scores after this term
    keep_if: bool = True      # "where": the scores survive where the condition equals this

    def key(self):
        return (self.kind, self.value, round(self.factor, 9), self.keep_if)  # the Value itself: no id reuse


@dataclass(frozen=True)
class MaskInfo:
    causal: bool
    mask_input: Value | None   # the graph input PadInfo reads, or None (no padding semantics)


def _describe(causal: bool, ranges: bool) -> str:
    return ("causal + padding" if ranges else "causal") if causal else ("padding" if ranges else "no mask")


def analyse(graph: Graph, terms: list[Term], causal_attr: bool, heads_split: bool) -> MaskInfo | str:
    """The semantics of `terms` (+ a causal flag the op itself carries), or why it is neither.
    `heads_split`: the scores are [B, H, S, T] (True) or [B*H, S, T] (False)."""
    key = (tuple(t.key() for t in terms), causal_attr, heads_split)
    memo = cache(graph).setdefault("masks", {})
    if key not in memo:
        try:
            memo[key] = _analyse(graph, terms, causal_attr, heads_split)
        except ProbeError as e:
            memo[key] = f"cannot probe the mask: {e}"
    return memo[key]


def _analyse(graph: Graph, terms: list[Term], causal_attr: bool, heads_split: bool) -> MaskInfo | str:
    inputs: dict[int, Value] = {}
    for t in terms:
        nodes, leaves = data_ancestry(t.value)
        reader = weight_reader(nodes)
        if reader is not None:
            return f"mask {t.value.name!r} depends on activations ({reader.name!r} reads a weight)"
        for leaf in leaves:
            if not any(leaf is v for v in graph.inputs):
                return f"mask {t.value.name!r} depends on {leaf.name!r}, which no node produces"
            inputs[id(leaf)] = leaf
    if len(inputs) > 1:
        return f"mask depends on several inputs ({', '.join(sorted(v.name for v in inputs.values()))})"
    mask_input = next(iter(inputs.values()), None)
    if mask_input is not None and (mask_input.shape is None or len(mask_input.shape) != 2):
        return f"mask input {mask_input.name!r} is not [B, S]"

    candidates = [(c, r) for c in (True, False) for r in ((True, False) if mask_input is not None else (False,))]
    for cfg in MASK_CONFIGS:
        probe = base_probe(graph, cfg)
        B, S = cfg.B, cfg.S
        T = S
        real = cfg.mask().astype(bool)                                   # (B, S) real query rows
        bias = None
        allowed = np.ones((1,) * (4 if heads_split else 3), bool)
        for t in terms:
            val = probe.value(t.value)
            try:
                kind = t.kind
                if kind == "auto":
                    kind = "where" if np.asarray(val).dtype == np.bool_ else "add"
                if kind == "add":
                    contrib = np.asarray(val, np.float64) * t.factor
                    bias = contrib if bias is None else bias + contrib
                else:
                    allowed = allowed & (np.asarray(val).astype(bool) == t.keep_if)
            except (TypeError, ValueError) as e:
                return f"mask {t.value.name!r} cannot be read at the probe: {e}"
        full = _to_BHST(allowed, B, S, T, heads_split)
        if isinstance(full, str):
            return full
        if bias is not None:
            b4 = _to_BHST(bias, B, S, T, heads_split)
            if isinstance(b4, str):
                return b4
            ok0, okneg = b4 == 0, b4 <= NEG
            bad = ~(ok0 | okneg) & real[:, None, :, None]
            if bad.any():
                ex = b4[bad][0]
                return f"additive mask has values other than 0 and a large negative number (e.g. {ex:g})"
            full = full & ok0
        rows = real[:, None, :, None]
        if np.any((full != full[:, :1]) & rows):
            return "mask differs between heads"
        got = full[:, 0]                                                 # (B, S, T)
        if causal_attr:
            got = got & np.tril(np.ones((S, T), bool), T - S)[None]
        ranges = pad_info(cfg.mask())
        cols = np.arange(T)
        pad_ok = (cols[None, :] >= ranges[:, :1]) & (cols[None, :] < ranges[:, 1:])   # (B, T)
        causal_ok = np.tril(np.ones((S, T), bool), T - S)
        keep = []
        for c, r in candidates:
            want = np.ones((B, S, T), bool)
            if r:
                want = want & pad_ok[:, None, :]
            if c:
                want = want & causal_ok[None]
            if np.array_equal(got[real], want[real]):
                keep.append((c, r))
        if not keep:
            return ("mask is neither causal+padding nor padding (at B=%d, S=%d, rows %s)"
                    % (B, S, list(cfg.rows)))
        candidates = keep
    causal, ranges_used = candidates[0]
    return MaskInfo(causal, mask_input if ranges_used else None)


def _to_BHST(arr: np.ndarray, B: int, S: int, T: int, heads_split: bool):
    arr = np.asarray(arr)
    try:
        if heads_split:
            lead = np.broadcast_shapes(arr.shape, (B, 1, S, T))
            return np.broadcast_to(arr, lead)
        # [B*H, S, T] scores: the mask must broadcast to it; split the leading axis back (B major)
        shp = np.broadcast_shapes(arr.shape, (B, S, T))
        if len(shp) != 3 or shp[0] % B:
            return f"mask of shape {list(arr.shape)} does not fit [B*H, S, T] scores"
        return np.broadcast_to(arr, shp).reshape(B, shp[0] // B, S, T)
    except ValueError:
        return f"mask of shape {list(arr.shape)} does not broadcast to the scores [B, H, {S}, {T}]"
