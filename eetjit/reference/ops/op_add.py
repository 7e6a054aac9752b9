"""Add: C = A + B elementwise, NumPy (multidirectional) broadcasting."""
import numpy as np

from eetjit.reference.registry import register


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # a: [..], b: [..] (broadcastable) -> broadcast shape, dtype of a (integers wrap)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(np.add(a, b), dtype=a.dtype)


@register("Add")
def _add(inputs, attrs, opset):
    return [add(inputs[0], inputs[1])]
