"""Slice: take ``data[start:end:step]`` along some axes.

Opset < 10: ``starts``/``ends``/``axes`` attributes, step 1. Opset >= 10: inputs
(data, starts, ends, axes?, steps?). Negative starts/ends count from the back; values
beyond the ends (e.g. INT64_MAX) are clamped: to [0, dim] for positive steps and to
[0, dim-1] (start) / [-1, dim-1] (end) for negative steps, where end == -1 means
"run past index 0".

Note: onnxruntime (1.32) instead treats end == INT64_MAX/INT32_MAX with a negative step
as "run to the front"; this kernel follows the spec's clamping.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list, normalize_axes, opt


def slice_(data: np.ndarray, starts, ends, axes=None, steps=None) -> np.ndarray:
    data = np.asarray(data)
    starts, ends = int_list(starts), int_list(ends)
    if len(starts) != len(ends):
        raise ValueError(f"Slice: starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else int_list(axes)
    steps = [1] * len(starts) if steps is None else int_list(steps)
    axes = normalize_axes(axes, data.ndim, "Slice")
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise ValueError("Slice: step must not be 0")
        dim = data.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start = min(max(start, 0), dim)
            end = min(max(end, 0), dim)
            index[axis] = slice(start, end, step)
        else:
            start = min(max(start, 0), dim - 1)
            end = min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
    return np.array(data[tuple(index)], copy=True)


@register("Slice")
def _slice(inputs, attrs, opset):
    if opset < 10:
        return [slice_(inputs[0], attrs["starts"], attrs["ends"], attrs.get("axes"))]
    axes, steps = opt(inputs, 3), opt(inputs, 4)
    return [slice_(inputs[0], inputs[1], inputs[2], axes, steps)]
