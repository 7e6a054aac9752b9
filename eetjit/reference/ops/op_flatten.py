"""Flatten: reshape to 2-D [prod(dims[:axis]), prod(dims[axis:])]; axis in [-r, r]."""
import numpy as np

from eetjit.reference.registry import register


def flatten(x: np.ndarray, axis: int = 1) -> np.ndarray:
    x = np.asarray(x)
    r = x.ndim
    if not -r <= axis <= r:
        raise ValueError(f"Flatten: axis {axis} out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis:], dtype=np.int64))
    return np.array(x.reshape(outer, inner), copy=True)


@register("Flatten")
def _flatten(inputs, attrs, opset):
    return [flatten(inputs[0], int(attrs.get("axis", 1)))]
