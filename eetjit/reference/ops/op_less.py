"""Less: C = A < B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.less(a, b), dtype=np.bool_)


@register("Less")
def _less(inputs, attrs, opset):
    return [less(inputs[0], inputs[1])]
