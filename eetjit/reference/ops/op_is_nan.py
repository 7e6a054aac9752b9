"""IsNaN: bool mask of NaN elements."""
import numpy as np

from eetjit.reference.registry import register


def is_nan(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.isnan(x), dtype=np.bool_)


@register("IsNaN")
def _is_nan(inputs, attrs, opset):
    return [is_nan(inputs[0])]
