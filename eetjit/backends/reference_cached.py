"""NumPy references of the KV-cache attention steps of generation (no graph op: the runtime calls them).

Cache layout: k_cache/v_cache [B, Hkv, T_max, D] — per (b, kv head) the keys are contiguous rows, which a
decode step streams. Both functions write the caches in place and reuse the prompt-attention reference, so the
math exists once (eetjit.fused.op_attention.attention).
"""
import numpy as np

from eetjit.fused.op_attention import attention


def _cache_as_keys(cache_BGTD, T):
    """Columns 0..T-1 of a cache, in the [B, T, Hkv*D] layout attention() reads."""
    B, G, _, D = cache_BGTD.shape
    return cache_BGTD[:, :, :T, :].transpose(0, 2, 1, 3).reshape(B, T, G * D)


def attention_prefill_cached(q_BSX, k_BSY, v_BSY, k_cache_BGTD, v_cache_BGTD, ranges_B2, num_heads,
                             kv_num_heads, head_dim, scale):
    """The prompt pass: write the prompt's K/V into cache columns 0..S-1, then causal attention of row i over
    columns ranges[b,0] <= c < ranges[b,1], c <= i. Returns y [B, S, H*D]."""
    B, S, _ = k_BSY.shape
    k_cache_BGTD[:, :, :S, :] = k_BSY.reshape(B, S, kv_num_heads, head_dim).transpose(0, 2, 1, 3)
    v_cache_BGTD[:, :, :S, :] = v_BSY.reshape(B, S, kv_num_heads, head_dim).transpose(0, 2, 1, 3)
    return attention(q_BSX, _cache_as_keys(k_cache_BGTD, S), _cache_as_keys(v_cache_BGTD, S), ranges_B2,
                     num_heads, kv_num_heads, head_dim, scale, causal=1)


def attention_decode(q_B1X, k_new_B1Y, v_new_B1Y, k_cache_BGTD, v_cache_BGTD, start_B, t, num_heads,
                     kv_num_heads, head_dim, scale):
    """One decode step: write the new token's K/V into cache column t, then attend columns start[b]..t
    inclusive (start = the pad count). Returns y [B, 1, H*D]."""
    B = q_B1X.shape[0]
    k_cache_BGTD[:, :, t, :] = k_new_B1Y.reshape(B, kv_num_heads, head_dim)
    v_cache_BGTD[:, :, t, :] = v_new_B1Y.reshape(B, kv_num_heads, head_dim)
    ranges = np.stack([np.asarray(start_B, np.int64), np.full(B, t + 1, np.int64)], axis=1)   # (B, 2)
    return attention(q_B1X, _cache_as_keys(k_cache_BGTD, t + 1), _cache_as_keys(v_cache_BGTD, t + 1), ranges,
                     num_heads, kv_num_heads, head_dim, scale, causal=0)
