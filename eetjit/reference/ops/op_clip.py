"""Clip: y = min(max(x, lo), hi) elementwise.

Opset < 11: ``min``/``max`` are float attributes (defaults: the dtype's lowest/highest).
Opset >= 11: ``min``/``max`` are optional scalar inputs. When lo > hi every element
becomes hi (max is applied last).
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def clip(x: np.ndarray, lo=None, hi=None) -> np.ndarray:
    x = np.asarray(x)
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo, dtype=x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi, dtype=x.dtype))
    return np.array(y, dtype=x.dtype)


@register("Clip")
def _clip(inputs, attrs, opset):
    x = inputs[0]
    if opset < 11:
        return [clip(x, attrs.get("min"), attrs.get("max"))]
    lo, hi = opt(inputs, 1), opt(inputs, 2)
    for name, v in (("min", lo), ("max", hi)):
        if v is not None and np.size(v) != 1:
            raise ValueError(f"Clip: '{name}' must be a scalar, got shape {np.shape(v)}")
    lo = None if lo is None else np.asarray(lo).reshape(())
    hi = None if hi is None else np.asarray(hi).reshape(())
    return [clip(x, lo, hi)]
