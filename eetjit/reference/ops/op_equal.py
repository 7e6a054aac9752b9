"""Equal: C = A == B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.equal(a, b), dtype=np.bool_)


@register("Equal")
def _equal(inputs, attrs, opset):
    return [equal(inputs[0], inputs[1])]
