"""GatherElements: out[i][j][k] = data[idx[i][j][k]][j][k] for axis 0 (likewise for others).

``indices`` has the rank of ``data``; the output has the shape of ``indices``.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def gather_elements(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    data, indices = np.asarray(data), np.asarray(indices).astype(np.int64)
    if data.ndim != indices.ndim:
        raise ValueError(f"GatherElements: rank mismatch {data.shape} vs {indices.shape}")
    axis = normalize_axis(axis, data.ndim, "GatherElements")
    n = data.shape[axis]
    if np.any((indices < -n) | (indices >= n)):
        raise ValueError(f"GatherElements: index out of range [-{n}, {n})")
    indices = np.where(indices < 0, indices + n, indices)
    # every output position reads data at its own coordinates, except along ``axis``
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return np.array(data[tuple(grid)], copy=True)


@register("GatherElements")
def _gather_elements(inputs, attrs, opset):
    return [gather_elements(inputs[0], inputs[1], int(attrs.get("axis", 0)))]
