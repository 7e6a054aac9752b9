"""Log: natural logarithm elementwise (log(0) = -inf, log(<0) = nan)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def log(x: np.ndarray) -> np.ndarray:
    dtype = np.asarray(x).dtype
    x = widen(x)                                # float16/bfloat16 -> float32
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log(x), dtype=dtype)


@register("Log")
def _log(inputs, attrs, opset):
    return [log(inputs[0])]
