"""Sigmoid: y = 1 / (1 + exp(-x)) elementwise."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Numerically stable split: for x >= 0 use 1/(1+e^-x); for x < 0 use e^x/(1+e^x),
    # so exp never sees a large positive argument.
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    e = np.exp(-np.abs(x))                      # in (0, 1], same dtype as x
    pos = 1 / (1 + e)                           # sigmoid(|x|)
    return np.asarray(np.where(x >= 0, pos, e * pos), dtype=dtype)


@register("Sigmoid")
def _sigmoid(inputs, attrs, opset):
    return [sigmoid(inputs[0])]
