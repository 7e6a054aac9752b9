"""Small helpers shared by the op files (not ops themselves)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def opt(inputs: Sequence, i: int):
    """``inputs[i]``, or ``None`` when the optional input is omitted or the list is shorter."""
    return inputs[i] if i < len(inputs) else None


def as_array(x, dtype=None) -> np.ndarray:
    """Always an ``np.ndarray`` (NumPy ufuncs turn 0-d arrays into scalars)."""
    return np.asarray(x, dtype=dtype)


def same_dtype(result, dtype) -> np.ndarray:
    """``result`` as an ndarray of exactly ``dtype`` (no copy when it already is)."""
    return np.asarray(result).astype(dtype, copy=False)


def int_list(x) -> list[int]:
    """A 1-D int tensor (or list / scalar) as a Python list of ints."""
    if x is None:
        return []
    return [int(v) for v in np.asarray(x).reshape(-1)]


def normalize_axis(axis: int, rank: int, op: str = "") -> int:
    """Map a possibly negative axis into ``[0, rank)``; ValueError when out of range."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes, rank: int, op: str = "") -> list[int]:
    out = [normalize_axis(a, rank, op) for a in axes]
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {list(axes)}")
    return out


def widen(x: np.ndarray) -> np.ndarray:
    """Narrow floats (float16, bfloat16, float8) as float32 for computing; others unchanged.

    Elementwise math on half-precision types is evaluated in float32 and rounded once back,
    as runtimes do; float32/float64 are computed in their own precision.
    """
    from ._dtypes import is_float

    x = np.asarray(x)
    if x.dtype.itemsize < 4 and is_float(x.dtype):
        return x.astype(np.float32)
    return x
