"""LayerNormalization (opset 17): normalise over dims [axis, rank), then scale and shift.

    mean      = mean(X, over those dims)                 # [d0..d(axis-1), 1, ..., 1]
    inv_std   = 1 / sqrt(mean((X - mean)**2) + epsilon)   # same shape
    Y         = (X - mean) * inv_std * Scale + B          # X's shape and dtype

Stage one (mean, inv_std, normalised X) runs in ``stash_type`` precision (an ONNX dtype
enum, default 1 = float32; this reference accumulates the sums in float64 and rounds
to it); Mean and InvStdDev are returned in that type. Outputs are always
[Y, Mean, InvStdDev]; the caller keeps those the node names.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis, opt
from ._dtypes import onnx_to_numpy


def layer_normalization(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None,
                        axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1):
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim, "LayerNormalization")
    axes = tuple(range(axis, x.ndim))
    stash = onnx_to_numpy(stash_type)
    xs = x.astype(stash).astype(np.float64)
    mean = np.mean(xs, axis=axes, keepdims=True)
    var = np.mean((xs - mean) ** 2, axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    normalized = ((xs - mean) * inv_std).astype(stash).astype(x.dtype)   # back to X's type
    y = normalized.astype(np.float64) * np.asarray(scale, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash)


@register("LayerNormalization")
def _layer_normalization(inputs, attrs, opset):
    y, mean, inv_std = layer_normalization(
        inputs[0], inputs[1], opt(inputs, 2), int(attrs.get("axis", -1)),
        float(attrs.get("epsilon", 1e-5)), int(attrs.get("stash_type", 1)))
    return [y, mean, inv_std]
