"""Squeeze: drop size-1 dimensions (the listed ``axes``, or all of them).

``axes`` is an attribute before opset 13 and an optional int64 input from opset 13.
An empty ``axes`` tensor counts as "not provided" (squeeze every size-1 dim), as in
onnxruntime.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list, normalize_axes, opt


def squeeze(x: np.ndarray, axes=None) -> np.ndarray:
    x = np.asarray(x)
    if axes is None or len(axes) == 0:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = normalize_axes(axes, x.ndim, "Squeeze")
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"Squeeze: axis {a} has size {x.shape[a]}, not 1")
    return np.array(np.squeeze(x, axis=tuple(axes)), copy=True)


@register("Squeeze")
def _squeeze(inputs, attrs, opset):
    if opset < 13:
        axes = attrs.get("axes")
    else:
        a = opt(inputs, 1)
        axes = None if a is None else int_list(a)
    return [squeeze(inputs[0], axes)]
