"""CumSum: running sum along ``axis`` (a scalar int input).

exclusive=1 leaves out the current element (the first output is 0); reverse=1 sums
from the end of the axis towards the start.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def cum_sum(x: np.ndarray, axis: int, exclusive: int = 0, reverse: int = 0) -> np.ndarray:
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim, "CumSum")
    y = np.flip(x, axis) if reverse else x
    with np.errstate(over="ignore"):
        c = np.cumsum(y, axis=axis, dtype=x.dtype)
    if exclusive and c.shape[axis]:
        # shift by one along the axis: [0, y0, y0+y1, ...]
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, np.take(c, np.arange(c.shape[axis] - 1), axis=axis)], axis=axis)
    if reverse:
        c = np.flip(c, axis)
    return np.ascontiguousarray(c, dtype=x.dtype)


@register("CumSum")
def _cum_sum(inputs, attrs, opset):
    a = np.asarray(inputs[1])
    if a.size != 1:
        raise ValueError(f"CumSum: axis must be a scalar, got shape {a.shape}")
    return [cum_sum(inputs[0], int(a.reshape(())), int(attrs.get("exclusive", 0)),
                    int(attrs.get("reverse", 0)))]
