"""Gelu (opset 20): x * Phi(x).

approximate="none": 0.5 * x * (1 + erf(x / sqrt(2)))
approximate="tanh": 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))
Computed in float64, rounded once to the input dtype.
"""
import math

import numpy as np

from eetjit.reference.registry import register

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    x = np.asarray(x)
    z = x.astype(np.float64)
    if approximate == "none":
        cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    elif approximate == "tanh":
        cdf = 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
    else:
        raise ValueError(f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return (z * cdf).astype(x.dtype)


@register("Gelu")
def _gelu(inputs, attrs, opset):
    a = attrs.get("approximate", "none")
    return [gelu(inputs[0], a.decode() if isinstance(a, bytes) else a)]
