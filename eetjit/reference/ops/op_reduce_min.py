"""ReduceMin: minimum over ``axes`` (all axes when none). Axes are an input from opset 18.

An empty reduction yields +inf (or the dtype's maximum for integers / True for bool).
"""
import numpy as np

from eetjit.reference.registry import register

from ._reduce import reduce_args, resolve_axes


def _highest(dtype):
    if dtype == np.bool_:
        return True
    if dtype.kind == "f":
        return np.inf
    return np.iinfo(dtype).max


def reduce_min(x: np.ndarray, axes=None, keepdims: int = 1) -> np.ndarray:
    x = np.asarray(x)
    ax = resolve_axes(x, axes, "ReduceMin")
    m = np.min(x, axis=ax, keepdims=bool(keepdims), initial=_highest(x.dtype))
    return np.asarray(m).astype(x.dtype)


@register("ReduceMin")
def _reduce_min(inputs, attrs, opset):
    axes, keepdims, noop = reduce_args("ReduceMin", inputs, attrs, opset, 18)
    if axes is None and noop:
        return [np.array(inputs[0], copy=True)]
    return [reduce_min(inputs[0], axes, keepdims)]
