"""Unsqueeze: insert size-1 dimensions at ``axes`` (positions in the *output*).

``axes`` is an attribute before opset 13 and a required int64 input from opset 13.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list, normalize_axes


def unsqueeze(x: np.ndarray, axes) -> np.ndarray:
    x = np.asarray(x)
    out_rank = x.ndim + len(axes)
    axes = sorted(normalize_axes(axes, out_rank, "Unsqueeze"))
    shape = list(x.shape)
    for a in axes:                       # ascending, so earlier inserts shift later ones correctly
        shape.insert(a, 1)
    return np.array(x.reshape(shape), copy=True)


@register("Unsqueeze")
def _unsqueeze(inputs, attrs, opset):
    axes = attrs.get("axes", []) if opset < 13 else int_list(inputs[1])
    return [unsqueeze(inputs[0], list(axes))]
