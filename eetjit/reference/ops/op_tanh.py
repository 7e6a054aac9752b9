"""Tanh: hyperbolic tangent elementwise."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def tanh(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    return np.asarray(np.tanh(x), dtype=dtype)


@register("Tanh")
def _tanh(inputs, attrs, opset):
    return [tanh(inputs[0])]
