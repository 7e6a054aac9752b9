"""GreaterOrEqual: C = A >= B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def greater_or_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.greater_equal(a, b), dtype=np.bool_)


@register("GreaterOrEqual")
def _greater_or_equal(inputs, attrs, opset):
    return [greater_or_equal(inputs[0], inputs[1])]
