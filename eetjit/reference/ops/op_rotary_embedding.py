"""RotaryEmbedding (opset 23): rotate pairs of features by position-dependent angles (RoPE).

X is [B, H, S, D] or [B, S, H*D] (then ``num_heads`` is required). The first R features
of each head (R = rotary_embedding_dim, or D when 0) are split into pairs (x1, x2):
halves [0, R/2) and [R/2, R) by default, or even/odd features when interleaved=1.
Each pair is rotated:  x1' = x1*cos - x2*sin,  x2' = x1*sin + x2*cos.
cos/sin are cos_cache[position_ids] / sin_cache[position_ids] ([B, S, R/2]) when
position_ids is given (caches [max_pos, R/2]), otherwise the caches are already [B, S, R/2].
Features beyond R pass through. Y has X's shape and dtype.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, interleaved: int = 0,
                     rotary_embedding_dim: int = 0, num_heads: int = 0) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)                        # [B, S, H, D]
    elif x.ndim == 3:
        if not num_heads:
            raise ValueError("RotaryEmbedding: 3-D input needs the num_heads attribute")
        b, s, hidden = x.shape
        xs = x.reshape(b, s, num_heads, hidden // num_heads)  # [B, S, H, D]
    else:
        raise ValueError(f"RotaryEmbedding: input must be 3-D or 4-D, got {x.shape}")
    d = xs.shape[-1]
    r = rotary_embedding_dim or d
    if r % 2 or r > d:
        raise ValueError(f"RotaryEmbedding: rotary dim {r} must be even and <= head size {d}")
    cos, sin = np.asarray(cos_cache), np.asarray(sin_cache)
    if position_ids is not None:
        pid = np.asarray(position_ids, dtype=np.int64)
        cos, sin = cos[pid], sin[pid]                       # [B, S, R/2]
    if cos.shape[-1] != r // 2 or sin.shape[-1] != r // 2:
        raise ValueError(f"RotaryEmbedding: cache width {cos.shape[-1]} != rotary dim / 2 = {r // 2}")
    cos = cos[:, :, None, :].astype(np.float64)             # [B, S, 1, R/2]
    sin = sin[:, :, None, :].astype(np.float64)

    rot = xs[..., :r].astype(np.float64)                    # [B, S, H, R]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : r // 2], rot[..., r // 2:]
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    out = np.array(xs, dtype=np.float64)                    # [B, S, H, D]; the tail passes through
    if interleaved:
        out[..., 0:r:2], out[..., 1:r:2] = y1, y2
    else:
        out[..., : r // 2], out[..., r // 2: r] = y1, y2
    out = out.astype(x.dtype)
    if x.ndim == 4:
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3))
    return out.reshape(x.shape)


@register("RotaryEmbedding")
def _rotary_embedding(inputs, attrs, opset):
    return [rotary_embedding(inputs[0], inputs[1], inputs[2], opt(inputs, 3),
                             int(attrs.get("interleaved", 0)), int(attrs.get("rotary_embedding_dim", 0)),
                             int(attrs.get("num_heads", 0) or 0))]
