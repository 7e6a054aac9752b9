"""Not: logical negation of a bool tensor."""
import numpy as np

from eetjit.reference.registry import register


def not_(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.logical_not(x), dtype=np.bool_)


@register("Not")
def _not(inputs, attrs, opset):
    return [not_(inputs[0])]
