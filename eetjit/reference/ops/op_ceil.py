"""Ceil: smallest integer >= x, elementwise (float types)."""
import numpy as np

from eetjit.reference.registry import register


def ceil(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.ceil(x), dtype=x.dtype)


@register("Ceil")
def _ceil(inputs, attrs, opset):
    return [ceil(inputs[0])]
