"""ReduceSum: sum over ``axes`` (all axes when none). Axes are an input from opset 13.

Float sums accumulate in float64 and round once to the input dtype; integer sums wrap
like C. An empty axes list with noop_with_empty_axes=1 returns the input unchanged.
"""
import numpy as np

from eetjit.reference.registry import register

from ._reduce import reduce_args, resolve_axes


def reduce_sum(x: np.ndarray, axes=None, keepdims: int = 1) -> np.ndarray:
    x = np.asarray(x)
    ax = resolve_axes(x, axes, "ReduceSum")
    acc = np.float64 if x.dtype.kind == "f" else None
    with np.errstate(over="ignore"):
        s = np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=acc)
    return np.asarray(s).astype(x.dtype)


@register("ReduceSum")
def _reduce_sum(inputs, attrs, opset):
    axes, keepdims, noop = reduce_args("ReduceSum", inputs, attrs, opset, 13)
    if axes is None and noop:
        return [np.array(inputs[0], copy=True)]
    return [reduce_sum(inputs[0], axes, keepdims)]
