"""Sub: C = A - B elementwise, NumPy (multidirectional) broadcasting."""
import numpy as np

from eetjit.reference.registry import register


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # a: [..], b: [..] (broadcastable) -> broadcast shape, dtype of a (integers wrap)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(np.subtract(a, b), dtype=a.dtype)


@register("Sub")
def _sub(inputs, attrs, opset):
    return [sub(inputs[0], inputs[1])]
