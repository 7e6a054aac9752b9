"""Trilu: keep the upper (default) or lower triangle of the last two dims, diagonal offset k.

upper: keep element (i, j) iff j - i >= k;  lower: keep iff j - i <= k. Others become 0.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def trilu(x: np.ndarray, k: int = 0, upper: int = 1) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"Trilu: input must have rank >= 2, got {x.ndim}")
    n, m = x.shape[-2:]
    i = np.arange(n)[:, None]                    # [N, 1]
    j = np.arange(m)[None, :]                    # [1, M]
    keep = (j - i >= k) if upper else (j - i <= k)   # [N, M], broadcasts over batch dims
    return np.where(keep, x, np.zeros((), dtype=x.dtype)).astype(x.dtype)


@register("Trilu")
def _trilu(inputs, attrs, opset):
    k = opt(inputs, 1)
    k = 0 if k is None else int(np.asarray(k).reshape(()))
    return [trilu(inputs[0], k, int(attrs.get("upper", 1)))]
