"""Concat: join tensors of equal rank along ``axis`` (negative allowed from opset 11)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def concat(xs, axis: int) -> np.ndarray:
    xs = [np.asarray(x) for x in xs]
    axis = normalize_axis(axis, xs[0].ndim, "Concat")
    return np.concatenate(xs, axis=axis)


@register("Concat")
def _concat(inputs, attrs, opset):
    if "axis" not in attrs and opset >= 4:
        raise ValueError("Concat: missing required attribute 'axis'")
    return [concat([x for x in inputs if x is not None], int(attrs.get("axis", 1)))]
