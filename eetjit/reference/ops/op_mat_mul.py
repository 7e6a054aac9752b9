"""MatMul: matrix product with numpy.matmul semantics (batched, broadcast, 1-D promotion).

A: [..., M, K], B: [..., K, N] -> [..., M, N]. Floats accumulate in float64 and round
once to the input dtype; integers multiply in their own type (wrapping like C).
"""
import numpy as np

from eetjit.reference.registry import register


def mat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        y = np.matmul(a.astype(np.float64), b.astype(np.float64))
    else:
        with np.errstate(over="ignore"):
            y = np.matmul(a, b)
    return np.asarray(y).astype(a.dtype)


@register("MatMul")
def _mat_mul(inputs, attrs, opset):
    return [mat_mul(inputs[0], inputs[1])]
