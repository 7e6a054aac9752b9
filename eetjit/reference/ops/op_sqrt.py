"""Sqrt: y = sqrt(x) elementwise (negative x gives nan)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def sqrt(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    with np.errstate(invalid="ignore"):
        return np.asarray(np.sqrt(x), dtype=dtype)


@register("Sqrt")
def _sqrt(inputs, attrs, opset):
    return [sqrt(inputs[0])]
