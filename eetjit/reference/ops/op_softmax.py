"""Softmax: exp(x - max) / sum(exp(x - max)).

Opset >= 13: normalises along ``axis`` (default -1).
Opset < 13: the input is viewed as 2-D [prod(dims[:axis]), prod(dims[axis:])] (default
axis 1) and normalised over the whole second dimension, then reshaped back.
Computed in float64, rounded once to the input dtype.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim, "Softmax")
    z = x.astype(np.float64)
    with np.errstate(invalid="ignore"):        # an all -inf row gives NaN, as in ONNX Runtime
        z = z - np.max(z, axis=axis, keepdims=True)
        e = np.exp(z)
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def softmax_2d(x: np.ndarray, axis: int = 1) -> np.ndarray:
    # pre-13 semantics: coerce to 2-D at axis, softmax each row
    x = np.asarray(x)
    r = x.ndim
    if not -r <= axis <= r:
        raise ValueError(f"Softmax: axis {axis} out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return softmax(x.reshape(rows, -1), axis=1).reshape(x.shape)


@register("Softmax")
def _softmax(inputs, attrs, opset):
    if opset < 13:
        return [softmax_2d(inputs[0], int(attrs.get("axis", 1)))]
    return [softmax(inputs[0], int(attrs.get("axis", -1)))]
