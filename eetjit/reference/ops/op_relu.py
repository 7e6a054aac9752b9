"""Relu: y = max(x, 0) elementwise (float and, from opset 14, signed integer types)."""
import numpy as np

from eetjit.reference.registry import register


def relu(x: np.ndarray) -> np.ndarray:
    zero = np.zeros((), dtype=x.dtype)
    return np.asarray(np.maximum(x, zero), dtype=x.dtype)


@register("Relu")
def _relu(inputs, attrs, opset):
    return [relu(inputs[0])]
