"""Floor: largest integer <= x, elementwise (float types)."""
import numpy as np

from eetjit.reference.registry import register


def floor(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.floor(x), dtype=x.dtype)


@register("Floor")
def _floor(inputs, attrs, opset):
    return [floor(inputs[0])]
