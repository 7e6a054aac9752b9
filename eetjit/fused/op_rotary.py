import numpy as np

from eetjit.reference.registry import register


def rotary(x, positions_BS, inv_freq, num_heads, head_dim, scaling=1.0):
    """Rotate-half rotary embedding applied per head: x*cos + rotate_half(x)*sin."""
    B, S, _ = x.shape
    x_BSHD = x.reshape(B, S, num_heads, head_dim).astype(np.float32)
    pos = np.broadcast_to(positions_BS, (B, S)).astype(np.float32)
    angle = pos[:, :, None] * inv_freq.astype(np.float32)[None, None, :]      # (B, S, D/2)
    angle = np.concatenate([angle, angle], axis=-1)                           # (B, S, D)
    cos = (np.cos(angle) * np.float32(scaling))[:, :, None, :]
    sin = (np.sin(angle) * np.float32(scaling))[:, :, None, :]
    half = head_dim // 2
    rot = np.concatenate([-x_BSHD[..., half:], x_BSHD[..., :half]], axis=-1)
    return (x_BSHD * cos + rot * sin).reshape(B, S, num_heads * head_dim).astype(x.dtype)


@register("Rotary", "eet")
def _rotary(inputs, attrs, opset):
    return [rotary(inputs[0], inputs[1], inputs[2], attrs["num_heads"], attrs["head_dim"],
                   attrs.get("scaling", 1.0))]
