"""Gather: pick slices of ``data`` along ``axis`` at ``indices`` (negative = from the back).

out.shape = data.shape[:axis] + indices.shape + data.shape[axis+1:]
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def gather(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    data, indices = np.asarray(data), np.asarray(indices).astype(np.int64)
    axis = normalize_axis(axis, data.ndim, "Gather")
    n = data.shape[axis]
    if np.any((indices < -n) | (indices >= n)):
        raise ValueError(f"Gather: index out of range [-{n}, {n})")
    indices = np.where(indices < 0, indices + n, indices)
    return np.asarray(np.take(data, indices, axis=axis))


@register("Gather")
def _gather(inputs, attrs, opset):
    return [gather(inputs[0], inputs[1], int(attrs.get("axis", 0)))]
