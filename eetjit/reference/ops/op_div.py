"""Div: C = A / B elementwise with broadcasting.

Floats divide as IEEE (x/0 -> +-inf, 0/0 -> nan). Integers divide like C: the quotient
is truncated toward zero (-7 / 2 == -3), unlike NumPy's floor division.
"""
import numpy as np

from eetjit.reference.registry import register


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu":
        with np.errstate(divide="ignore", over="ignore"):
            # a == q*b + r with r taking a's sign (C's %), so q = (a - r) / b is exact.
            r = np.fmod(a, b)
            q = (a - r) // b
        return np.asarray(q, dtype=a.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.asarray(np.true_divide(a, b), dtype=a.dtype)


@register("Div")
def _div(inputs, attrs, opset):
    return [div(inputs[0], inputs[1])]
