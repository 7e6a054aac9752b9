"""Mod: elementwise remainder with broadcasting.

fmod=0 (default): A - floor(A/B)*B, the result takes the sign of B (Python's %).
                  Only valid for integers before opset 28; floats need fmod=1 there.
fmod=1:           A - trunc(A/B)*B, the result takes the sign of A (C's fmod).
"""
import numpy as np

from eetjit.reference.registry import register


def mod(a: np.ndarray, b: np.ndarray, fmod: int = 0) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        if fmod:
            r = np.fmod(a, b)
        else:
            r = np.mod(a, b)        # floor-based remainder, sign of the divisor
    return np.asarray(r, dtype=a.dtype)


@register("Mod")
def _mod(inputs, attrs, opset):
    fmod = int(attrs.get("fmod", 0))
    if fmod not in (0, 1):
        raise ValueError(f"Mod: fmod must be 0 or 1, got {fmod}")
    a = inputs[0]
    if fmod == 0 and np.asarray(a).dtype.kind == "f" and opset < 28:
        raise ValueError("Mod: floating-point inputs require fmod=1 before opset 28")
    return [mod(a, inputs[1], fmod)]
