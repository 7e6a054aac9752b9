import numpy as np

from eetjit.errors import InputError
from eetjit.reference.registry import register


def pad_info(mask_BS):
    """[B, 2] (first, one-past-last) valid column of each row; the ones must be contiguous."""
    m = np.asarray(mask_BS) != 0
    B, S = m.shape
    ranges = np.zeros((B, 2), np.int64)
    for b in range(B):
        cols = np.flatnonzero(m[b])
        if cols.size == 0:
            ranges[b] = (S, S)
            continue
        first, last = cols[0], cols[-1] + 1
        if cols.size != last - first:
            raise InputError(f"attention_mask row {b} has holes (ones at {cols.tolist()}); eetjit supports "
                             "left or right padding only (the ones of a row must be contiguous)")
        ranges[b] = (first, last)
    return ranges


def attention(q, k, v, ranges, num_heads, kv_num_heads, head_dim, scale, causal):
    """eet.Attention as the contract in eetjit/fused/__init__.py states it; rows a pad_rows_unused attribute
    leaves unspecified are computed like any row here."""
    B, S, _ = q.shape
    T = k.shape[1]
    q_BHSD = q.reshape(B, S, num_heads, head_dim).transpose(0, 2, 1, 3).astype(np.float32)
    k_BHTD = k.reshape(B, T, kv_num_heads, head_dim).transpose(0, 2, 1, 3).astype(np.float32)
    v_BHTD = v.reshape(B, T, kv_num_heads, head_dim).transpose(0, 2, 1, 3).astype(np.float32)
    rep = num_heads // kv_num_heads                         # grouped-query: each kv head serves `rep` q heads
    k_BHTD = np.repeat(k_BHTD, rep, axis=1)
    v_BHTD = np.repeat(v_BHTD, rep, axis=1)
    scores = (q_BHSD @ k_BHTD.transpose(0, 1, 3, 2)) * np.float32(scale)   # (B, H, S, T)
    cols = np.arange(T)
    if ranges is None:
        ranges = np.tile(np.array([[0, T]], np.int64), (B, 1))
    allowed = (cols[None, :] >= ranges[:, :1]) & (cols[None, :] < ranges[:, 1:])   # (B, T)
    allowed = np.broadcast_to(allowed[:, None, None, :], scores.shape)
    if causal:
        rows = np.arange(S) + (T - S)                       # query i sits at column T - S + i
        allowed = allowed & (cols[None, :] <= rows[:, None])[None, None]
    scores = np.where(allowed, scores, -np.inf)
    mx = scores.max(-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0)
    p = np.exp(scores - mx)
    denom = p.sum(-1, keepdims=True)
    p = np.where(denom > 0, p / np.where(denom > 0, denom, 1), 0)
    y_BHSD = p @ v_BHTD
    return y_BHSD.transpose(0, 2, 1, 3).reshape(B, S, num_heads * head_dim).astype(q.dtype)


@register("PadInfo", "eet")
def _pad_info(inputs, attrs, opset):
    return [pad_info(inputs[0])]


@register("Attention", "eet")
def _attention(inputs, attrs, opset):
    q, k, v = inputs[0], inputs[1], inputs[2]
    ranges = inputs[3] if len(inputs) > 3 else None
    return [attention(q, k, v, ranges, attrs["num_heads"], attrs.get("kv_num_heads", attrs["num_heads"]),
                      attrs["head_dim"], attrs["scale"], attrs.get("causal", 0))]
