"""Gemm: Y = alpha * A' @ B' + beta * C, with A' = A.T if transA, B' = B.T if transB.

A: [M, K] (or [K, M]), B: [K, N] (or [N, K]), C unidirectionally broadcastable to [M, N]
and optional from opset 11. Floats accumulate in float64 and round once to A's dtype.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, alpha: float = 1.0,
         beta: float = 1.0, trans_a: int = 0, trans_b: int = 0) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm: A and B must be 2-D, got {a.shape} and {b.shape}")
    dtype = a.dtype
    acc = np.float64 if dtype.kind == "f" else np.int64
    a2 = a.T if trans_a else a                    # [M, K]
    b2 = b.T if trans_b else b                    # [K, N]
    if a2.shape[1] != b2.shape[0]:
        raise ValueError(f"Gemm: inner dimensions differ: {a2.shape} @ {b2.shape}")
    y = a2.astype(acc) @ b2.astype(acc)           # [M, N]
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        c = np.asarray(c).astype(acc)
        y = y + (c * beta if beta != 1.0 else c)  # C broadcasts to [M, N]
    return np.asarray(y).astype(dtype)


@register("Gemm")
def _gemm(inputs, attrs, opset):
    return [gemm(inputs[0], inputs[1], opt(inputs, 2), float(attrs.get("alpha", 1.0)),
                 float(attrs.get("beta", 1.0)), int(attrs.get("transA", 0)), int(attrs.get("transB", 0)))]
