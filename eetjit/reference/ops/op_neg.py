"""Neg: y = -x elementwise."""
import numpy as np

from eetjit.reference.registry import register


def neg(x: np.ndarray) -> np.ndarray:
    # x: any shape -> same shape, same dtype
    return np.asarray(np.negative(x), dtype=x.dtype)


@register("Neg")
def _neg(inputs, attrs, opset):
    return [neg(inputs[0])]
