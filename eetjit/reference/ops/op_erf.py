"""Erf: the Gauss error function, elementwise."""
import math

import numpy as np

from eetjit.reference.registry import register

_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    # Evaluated in float64 with libm's erf, then rounded to x's dtype.
    x = np.asarray(x)
    return np.asarray(_erf64(x.astype(np.float64)), dtype=x.dtype)


@register("Erf")
def _erf(inputs, attrs, opset):
    return [erf(inputs[0])]
