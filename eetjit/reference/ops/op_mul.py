"""Mul: C = A * B elementwise, NumPy (multidirectional) broadcasting."""
import numpy as np

from eetjit.reference.registry import register


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # a: [..], b: [..] (broadcastable) -> broadcast shape, dtype of a (integers wrap)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(np.multiply(a, b), dtype=a.dtype)


@register("Mul")
def _mul(inputs, attrs, opset):
    return [mul(inputs[0], inputs[1])]
