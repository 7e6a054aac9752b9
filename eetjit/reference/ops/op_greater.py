"""Greater: C = A > B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def greater(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.greater(a, b), dtype=np.bool_)


@register("Greater")
def _greater(inputs, attrs, opset):
    return [greater(inputs[0], inputs[1])]
