"""Range: [start, start+delta, ...) up to ``limit`` (exclusive); scalar inputs of one dtype.

n = max(ceil((limit - start) / delta), 0) and out[i] = start + i * delta.
"""
import math

import numpy as np

from eetjit.reference.registry import register


def range_(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    dtype = start.dtype
    if dtype.kind in "iu":
        s, l, d = int(start), int(limit), int(delta)
        if d == 0:
            raise ValueError("Range: delta must not be zero")
        n = max(-((s - l) // d), 0)                     # exact integer ceil((l - s) / d)
        return (s + d * np.arange(n, dtype=np.int64)).astype(dtype)
    s, l, d = float(start), float(limit), float(delta)
    if d == 0:
        raise ValueError("Range: delta must not be zero")
    n = max(math.ceil((l - s) / d), 0)
    i = np.arange(n, dtype=np.float64)
    return (s + i * d).astype(dtype)


@register("Range")
def _range(inputs, attrs, opset):
    return [range_(inputs[0], inputs[1], inputs[2])]
