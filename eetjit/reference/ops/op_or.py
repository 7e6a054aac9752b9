"""Or: C = A or B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def or_(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.logical_or(a, b), dtype=np.bool_)


@register("Or")
def _or_(inputs, attrs, opset):
    return [or_(inputs[0], inputs[1])]
