"""Abs: y = |x| elementwise."""
import numpy as np

from eetjit.reference.registry import register


def abs_(x: np.ndarray) -> np.ndarray:
    # x: any shape -> same shape, same dtype (signed integers wrap at their minimum, like C)
    return np.asarray(np.abs(x), dtype=x.dtype)


@register("Abs")
def _abs(inputs, attrs, opset):
    return [abs_(inputs[0])]
