"""Shared plumbing for the Reduce* ops: where the axes come from, and keepdims."""
from __future__ import annotations

import numpy as np

from ._common import int_list, normalize_axes, opt


def reduce_args(name: str, inputs, attrs, opset: int, axes_input_since: int):
    """-> (axes or None for "all", keepdims, noop) following the op's opset form.

    Before ``axes_input_since`` the axes are an attribute; from it on, an optional input,
    together with ``noop_with_empty_axes``.
    """
    keepdims = int(attrs.get("keepdims", 1))
    if opset < axes_input_since:
        axes = attrs.get("axes")
        return (None if axes is None else list(axes)), keepdims, False
    a = opt(inputs, 1)
    axes = None if a is None else int_list(a)
    noop = bool(attrs.get("noop_with_empty_axes", 0))
    if not axes:
        axes = None
    return axes, keepdims, noop


def resolve_axes(x: np.ndarray, axes, name: str) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(x.ndim))
    return tuple(normalize_axes(axes, x.ndim, name))
