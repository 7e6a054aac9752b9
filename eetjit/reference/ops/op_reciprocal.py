"""Reciprocal: y = 1 / x elementwise."""
import numpy as np

from eetjit.reference.registry import register


def reciprocal(x: np.ndarray) -> np.ndarray:
    one = np.ones((), dtype=x.dtype)
    with np.errstate(divide="ignore", over="ignore"):
        return np.asarray(one / x, dtype=x.dtype)


@register("Reciprocal")
def _reciprocal(inputs, attrs, opset):
    return [reciprocal(inputs[0])]
