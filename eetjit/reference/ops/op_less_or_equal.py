"""LessOrEqual: C = A <= B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def less_or_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.less_equal(a, b), dtype=np.bool_)


@register("LessOrEqual")
def _less_or_equal(inputs, attrs, opset):
    return [less_or_equal(inputs[0], inputs[1])]
