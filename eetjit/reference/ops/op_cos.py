"""Cos: y = cos(x) elementwise."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def cos(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    return np.asarray(np.cos(x), dtype=dtype)


@register("Cos")
def _cos(inputs, attrs, opset):
    return [cos(inputs[0])]
