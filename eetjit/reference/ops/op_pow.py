"""Pow: Z = X ** Y elementwise with broadcasting; Z has X's dtype.

The exponent may have a different type than the base (opset 12+). Mixed cases are
computed in float64 and rounded/truncated back to X's dtype; integer ** integer stays
in integer arithmetic (wrapping like C on overflow).
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import widen


def pow_(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x), np.asarray(y)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if x.dtype == y.dtype and x.dtype.kind == "f":
            z = np.power(widen(x), widen(y))       # float16/bfloat16 evaluated in float32
        elif x.dtype.kind in "iu" and y.dtype.kind in "iu":
            if np.any(y < 0):
                # C's pow(int, negative) truncated: 1 for |x|==1 patterns, 0 otherwise
                z = np.trunc(np.power(x.astype(np.float64), y.astype(np.float64)))
            else:
                z = np.power(x.astype(np.int64), y.astype(np.int64))
        else:
            z = np.power(x.astype(np.float64), y.astype(np.float64))
        return np.asarray(z).astype(x.dtype)


@register("Pow")
def _pow(inputs, attrs, opset):
    return [pow_(inputs[0], inputs[1])]
