"""Size: number of elements of the input, as an int64 scalar."""
import numpy as np

from eetjit.reference.registry import register


def size(x: np.ndarray) -> np.ndarray:
    return np.array(np.size(x), dtype=np.int64)


@register("Size")
def _size(inputs, attrs, opset):
    return [size(inputs[0])]
