"""Sin: y = sin(x) elementwise."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def sin(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    return np.asarray(np.sin(x), dtype=dtype)


@register("Sin")
def _sin(inputs, attrs, opset):
    return [sin(inputs[0])]
