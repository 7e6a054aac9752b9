"""RMSNormalization (opset 23): Y = X / sqrt(mean(X**2 over dims [axis, rank)) + epsilon) * scale.

The root-mean-square stage runs in ``stash_type`` precision (ONNX dtype enum, default
float32; sums accumulate in float64 here), is cast back to X's type, and is then
multiplied by ``scale`` (broadcastable to the normalised shape). Y has scale's dtype.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import normalize_axis
from ._dtypes import onnx_to_numpy


def rms_normalization(x: np.ndarray, scale: np.ndarray, axis: int = -1, epsilon: float = 1e-5,
                      stash_type: int = 1) -> np.ndarray:
    x, scale = np.asarray(x), np.asarray(scale)
    axis = normalize_axis(axis, x.ndim, "RMSNormalization")
    axes = tuple(range(axis, x.ndim))
    stash = onnx_to_numpy(stash_type)
    xs = x.astype(stash).astype(np.float64)
    rms = np.sqrt(np.mean(xs * xs, axis=axes, keepdims=True) + epsilon)   # [d0..d(axis-1), 1, ...]
    normalized = (xs / rms).astype(stash).astype(x.dtype)
    y = normalized.astype(np.float64) * scale.astype(np.float64)
    return y.astype(scale.dtype)


@register("RMSNormalization")
def _rms_normalization(inputs, attrs, opset):
    return [rms_normalization(inputs[0], inputs[1], int(attrs.get("axis", -1)),
                              float(attrs.get("epsilon", 1e-5)), int(attrs.get("stash_type", 1)))]
