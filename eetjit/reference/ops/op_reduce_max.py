"""ReduceMax: maximum over ``axes`` (all axes when none). Axes are an input from opset 18.

An empty reduction yields -inf (or the dtype's minimum for integers / False for bool).
"""
import numpy as np

from eetjit.reference.registry import register

from ._reduce import reduce_args, resolve_axes


def _lowest(dtype):
    if dtype == np.bool_:
        return False
    if dtype.kind == "f":
        return -np.inf
    return np.iinfo(dtype).min


def reduce_max(x: np.ndarray, axes=None, keepdims: int = 1) -> np.ndarray:
    x = np.asarray(x)
    ax = resolve_axes(x, axes, "ReduceMax")
    m = np.max(x, axis=ax, keepdims=bool(keepdims), initial=_lowest(x.dtype))
    return np.asarray(m).astype(x.dtype)


@register("ReduceMax")
def _reduce_max(inputs, attrs, opset):
    axes, keepdims, noop = reduce_args("ReduceMax", inputs, attrs, opset, 18)
    if axes is None and noop:
        return [np.array(inputs[0], copy=True)]
    return [reduce_max(inputs[0], axes, keepdims)]
