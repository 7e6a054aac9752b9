"""ReduceMean: arithmetic mean over ``axes`` (all axes when none). Axes are an input from opset 18.

Accumulates in float64 and rounds once to the input dtype. For integer inputs the mean
is truncated toward zero like C integer division. An empty reduction gives NaN (0/0).
"""
import numpy as np

from eetjit.reference.registry import register

from ._reduce import reduce_args, resolve_axes


def reduce_mean(x: np.ndarray, axes=None, keepdims: int = 1) -> np.ndarray:
    x = np.asarray(x)
    ax = resolve_axes(x, axes, "ReduceMean")
    count = int(np.prod([x.shape[a] for a in ax], dtype=np.int64))
    if x.dtype.kind in "iu":
        s = np.sum(x.astype(np.int64), axis=ax, keepdims=bool(keepdims))
        q = np.trunc(s / count) if count else np.zeros_like(s)
        return np.asarray(q).astype(x.dtype)
    s = np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(s / count).astype(x.dtype)


@register("ReduceMean")
def _reduce_mean(inputs, attrs, opset):
    axes, keepdims, noop = reduce_args("ReduceMean", inputs, attrs, opset, 18)
    if axes is None and noop:
        return [np.array(inputs[0], copy=True)]
    return [reduce_mean(inputs[0], axes, keepdims)]
