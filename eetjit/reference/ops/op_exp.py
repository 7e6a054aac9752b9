"""Exp: y = e**x elementwise (overflow gives +inf, as in C)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def exp(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(x), dtype=dtype)


@register("Exp")
def _exp(inputs, attrs, opset):
    return [exp(inputs[0])]
