"""Attention (opset 23; 24 adds ``nonpad_kv_seqlen``, 25 adds sliding windows).

Scaled dot-product attention with optional mask, causal masking, KV cache and GQA:

    Q: [B, Hq, Sq, D]   K: [B, Hkv, Skv, D]   V: [B, Hkv, Skv, Dv]
    (or 3-D [B, S, H*D] with the q_num_heads / kv_num_heads attributes)

    K, V      <- concat(past_key, K), concat(past_value, V) along the sequence axis
                 (these are present_key / present_value, T = past + Skv)
    scores    = (Q @ K^T) * scale                    [B, Hq, Sq, T]; scale = 1/sqrt(D) by default
    scores    = softcap * tanh(scores / softcap)      if softcap > 0
    scores   += bias   where bias = attn_mask (float, added) or 0/-inf (bool, True = attend),
                        plus -inf outside the causal frontier (key j visible to query i iff
                        j <= i + offset) and outside the sliding window, and on padded keys
    probs     = softmax(scores, last axis); a row whose every key is -inf gives zeros
    Y         = probs @ V                              [B, Hq, Sq, Dv] (3-D in -> 3-D out)

With GQA (Hq = g * Hkv) query head h reads key/value head h // g. ``offset`` is the
past length, or nonpad_kv_seqlen[b] - Sq when an external cache is described by
``nonpad_kv_seqlen``. The math runs in float64 (at least as precise as any
``softmax_precision``) and results are rounded to Q's dtype. Outputs are always
[Y, present_key, present_value, qk_matmul_output]; qk_matmul_output is the scores after
stage ``qk_matmul_output_mode``: 0 raw, 1 after softcap, 2 after the mask, 3 the softmax.
"""
from __future__ import annotations

import math

import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def _to_heads(x: np.ndarray, num_heads: int | None, what: str) -> np.ndarray:
    # [B, S, H*D] -> [B, H, S, D]
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise ValueError(f"Attention: {what} must be 3-D or 4-D, got shape {x.shape}")
    if not num_heads:
        raise ValueError(f"Attention: 3-D {what} needs the q_num_heads/kv_num_heads attributes")
    b, s, hidden = x.shape
    if hidden % num_heads:
        raise ValueError(f"Attention: {what} hidden size {hidden} not divisible by {num_heads} heads")
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal: int = 0, scale: float | None = None, q_num_heads: int | None = None,
              kv_num_heads: int | None = None, softcap: float = 0.0, qk_matmul_output_mode: int = 0,
              left_window_size: int = -1, right_window_size: int = -1, pad_short_mask: bool = False):
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    dtype = q.dtype
    three_d = q.ndim == 3
    q4 = _to_heads(q, q_num_heads, "Q")                   # [B, Hq, Sq, D]
    k4 = _to_heads(k, kv_num_heads, "K")                  # [B, Hkv, Skv, D]
    v4 = _to_heads(v, kv_num_heads, "V")                  # [B, Hkv, Skv, Dv]
    if (past_key is None) != (past_value is None):
        raise ValueError("Attention: past_key and past_value must be given together")
    past_len = 0
    if past_key is not None:
        past_len = past_key.shape[2]
        k4 = np.concatenate([np.asarray(past_key), k4], axis=2)     # [B, Hkv, T, D]
        v4 = np.concatenate([np.asarray(past_value), v4], axis=2)   # [B, Hkv, T, Dv]
    present_key, present_value = np.ascontiguousarray(k4), np.ascontiguousarray(v4)

    batch, hq, sq, head = q4.shape
    hkv, total = k4.shape[1], k4.shape[2]
    if hq % hkv:
        raise ValueError(f"Attention: q heads {hq} not a multiple of kv heads {hkv}")
    group = hq // hkv
    kr = np.repeat(k4, group, axis=1).astype(np.float64)  # [B, Hq, T, D]
    vr = np.repeat(v4, group, axis=1).astype(np.float64)  # [B, Hq, T, Dv]
    qf = q4.astype(np.float64)

    s = 1.0 / math.sqrt(head) if scale is None else float(scale)
    scores = (qf @ kr.transpose(0, 1, 3, 2)) * s         # [B, Hq, Sq, T]
    qk = {0: scores}
    if softcap > 0:
        scores = softcap * np.tanh(scores / softcap)
    qk[1] = scores

    # ---- additive bias [B, 1, Sq, T] from the mask, causality, windows and padding ----
    bias = np.zeros((batch, 1, sq, total))
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if pad_short_mask and m.ndim and 1 < m.shape[-1] < total:
            fill = False if m.dtype == np.bool_ else -np.inf
            pad_width = [(0, 0)] * (m.ndim - 1) + [(0, total - m.shape[-1])]
            m = np.pad(m, pad_width, constant_values=fill)
        if m.dtype == np.bool_:
            bias = bias + np.where(m, 0.0, -np.inf)
        else:
            bias = bias + m.astype(np.float64)
    if nonpad_kv_seqlen is not None:
        valid = np.asarray(nonpad_kv_seqlen, dtype=np.int64).reshape(batch, 1, 1, 1)
        offset = valid - sq                                 # [B, 1, 1, 1]
        j = np.arange(total).reshape(1, 1, 1, total)
        bias = bias + np.where(j < valid, 0.0, -np.inf)
    else:
        offset = np.full((batch, 1, 1, 1), past_len)
    i = np.arange(sq).reshape(1, 1, sq, 1)
    j = np.arange(total).reshape(1, 1, 1, total)
    pos = i + offset                                        # absolute query position
    allowed = np.ones(np.broadcast_shapes(pos.shape, j.shape), dtype=np.bool_)
    if is_causal:
        allowed &= j <= pos
    if left_window_size >= 0:
        allowed &= j >= pos - left_window_size
    if right_window_size >= 0:
        allowed &= j <= pos + right_window_size
    bias = bias + np.where(allowed, 0.0, -np.inf)
    scores = scores + bias
    qk[2] = scores

    # ---- softmax over keys; fully masked rows become zeros ----
    row_max = np.max(scores, axis=-1, keepdims=True)
    dead = ~np.isfinite(row_max) & (row_max < 0)            # every key is -inf
    e = np.exp(scores - np.where(dead, 0.0, row_max))
    denom = np.sum(e, axis=-1, keepdims=True)
    probs = np.where(dead, 0.0, e / np.where(dead, 1.0, denom))
    qk[3] = probs

    y = probs @ vr                                          # [B, Hq, Sq, Dv]
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(batch, sq, -1)  # [B, Sq, Hq*Dv]
    if qk_matmul_output_mode not in qk:
        raise ValueError(f"Attention: qk_matmul_output_mode must be 0..3, got {qk_matmul_output_mode}")
    qk_out = np.broadcast_to(qk[qk_matmul_output_mode], (batch, hq, sq, total))
    return (np.ascontiguousarray(y.astype(dtype)), present_key, present_value,
            np.ascontiguousarray(qk_out.astype(dtype)))


@register("Attention")
def _attention(inputs, attrs, opset):
    if attrs.get("softcap", 0.0) < 0:
        raise ValueError("Attention: softcap must be >= 0")
    y, pk, pv, qk = attention(
        inputs[0], inputs[1], inputs[2], opt(inputs, 3), opt(inputs, 4), opt(inputs, 5),
        opt(inputs, 6) if opset >= 24 else None,
        is_causal=int(attrs.get("is_causal", 0)),
        scale=attrs.get("scale"),
        q_num_heads=attrs.get("q_num_heads"),
        kv_num_heads=attrs.get("kv_num_heads"),
        softcap=float(attrs.get("softcap", 0.0)),
        qk_matmul_output_mode=int(attrs.get("qk_matmul_output_mode", 0)),
        left_window_size=int(attrs.get("left_window_size", -1)) if opset >= 25 else -1,
        right_window_size=int(attrs.get("right_window_size", -1)) if opset >= 25 else -1,
        pad_short_mask=opset >= 24,
    )
    return [y, pk, pv, qk]
