"""Shape: the dimensions of the input as a 1-D int64 tensor, optionally sliced by start/end."""
import numpy as np

from eetjit.reference.registry import register


def shape(x: np.ndarray, start: int = 0, end: int | None = None) -> np.ndarray:
    # start/end (opset 15) behave like a Python slice of the dims, negatives count from the
    # back and out-of-range values are clamped to [0, rank].
    dims = np.shape(x)
    rank = len(dims)

    def clamp(i):
        i = i + rank if i < 0 else i
        return min(max(i, 0), rank)

    lo = clamp(int(start))
    hi = rank if end is None else clamp(int(end))
    return np.array(dims[lo:hi], dtype=np.int64).reshape(-1)


@register("Shape")
def _shape(inputs, attrs, opset):
    if opset < 15:
        return [shape(inputs[0])]
    return [shape(inputs[0], attrs.get("start", 0), attrs.get("end"))]
