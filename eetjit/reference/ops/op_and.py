"""And: C = A and B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def and_(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.logical_and(a, b), dtype=np.bool_)


@register("And")
def _and_(inputs, attrs, opset):
    return [and_(inputs[0], inputs[1])]
