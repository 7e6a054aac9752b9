"""Shared NumPy math for the fused references (written once, used by several ops)."""
import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def layer_norm(x, gamma, beta, epsilon):
    x32 = x.astype(np.float32)
    mean = x32.mean(-1, keepdims=True)
    var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
    y = (x32 - mean) / np.sqrt(var + np.float32(epsilon)) * gamma
    if beta is not None:
        y = y + beta
    return y.astype(x.dtype)


def rms_norm(x, gamma, epsilon):
    x32 = x.astype(np.float32)
    ms = (x32 * x32).mean(-1, keepdims=True)
    return (x32 / np.sqrt(ms + np.float32(epsilon)) * gamma).astype(x.dtype)


def activation(y, kind: str):
    if kind == "none":
        return y
    if kind == "relu":
        return np.maximum(y, 0)
    if kind == "silu":
        return y / (1 + np.exp(-y))
    if kind == "gelu_tanh":
        c = np.float32(math.sqrt(2 / math.pi))
        return (0.5 * y * (1 + np.tanh(c * (y + np.float32(0.044715) * y * y * y)))).astype(y.dtype)
    if kind == "gelu_erf":
        return (0.5 * y * (1 + _erf(y / math.sqrt(2)))).astype(y.dtype)
    raise ValueError(f"unknown activation {kind!r}")
