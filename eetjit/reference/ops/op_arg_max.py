"""ArgMax: int64 index of the largest element along ``axis``.

Ties pick the first occurrence, or the last with select_last_index=1 (opset 12+).
keepdims=1 (default) keeps the reduced axis with size 1.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def arg_max(x: np.ndarray, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> np.ndarray:
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim, "ArgMax")
    if select_last_index:
        # search the reversed axis, then map the position back
        n = x.shape[axis]
        idx = n - 1 - np.argmax(np.flip(x, axis=axis), axis=axis)
    else:
        idx = np.argmax(x, axis=axis)
    if keepdims:
        idx = np.expand_dims(idx, axis)
    return np.asarray(idx, dtype=np.int64)


@register("ArgMax")
def _arg_max(inputs, attrs, opset):
    return [arg_max(inputs[0], int(attrs.get("axis", 0)), int(attrs.get("keepdims", 1)),
                    int(attrs.get("select_last_index", 0)))]
