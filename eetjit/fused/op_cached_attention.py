"""CachedAttention: attention of a chunk of new tokens over a preallocated KV cache (pre-padding generation).

Inputs: q[B, S, H*D], k[B, S, Hkv*D], v[B, S, Hkv*D], k_cache[B, Hkv, T, D], v_cache[B, Hkv, T, D],
start[B] int64 (the pad count: first real column), step[1] int64 (the column of the chunk's first token).
The chunk's keys/values are written into columns step .. step+S-1 of the caches (in place), then query s
(column c = step + s) of sequence b attends columns start[b] .. c. Pad columns are never read.
"""
import numpy as np

from eetjit.fused.op_attention import attention
from eetjit.reference.registry import register


def cached_attention(q, k, v, k_cache, v_cache, start, step, num_heads, kv_num_heads, head_dim, scale):
    B, S, _ = q.shape
    t0 = int(step.reshape(-1)[0])
    k_cache[:, :, t0:t0 + S, :] = k.reshape(B, S, kv_num_heads, head_dim).transpose(0, 2, 1, 3)
    v_cache[:, :, t0:t0 + S, :] = v.reshape(B, S, kv_num_heads, head_dim).transpose(0, 2, 1, 3)
    T = t0 + S
    k_all = k_cache[:, :, :T, :].transpose(0, 2, 1, 3).reshape(B, T, kv_num_heads * head_dim)
    v_all = v_cache[:, :, :T, :].transpose(0, 2, 1, 3).reshape(B, T, kv_num_heads * head_dim)
    ranges = np.stack([np.asarray(start, np.int64), np.full(B, T, np.int64)], axis=1)
    return attention(q, k_all, v_all, ranges, num_heads, kv_num_heads, head_dim, scale, causal=1)


@register("CachedAttention", "eet")
def _cached_attention(inputs, attrs, opset):
    q, k, v, kc, vc, start, step = inputs[:7]
    return [cached_attention(q, k, v, kc, vc, start, step, attrs["num_heads"],
                             attrs.get("kv_num_heads", attrs["num_heads"]), attrs["head_dim"], attrs["scale"])]


@register("LastToken", "eet")
def _last_token(inputs, attrs, opset):
    return [np.ascontiguousarray(inputs[0][:, -1:, :])]
