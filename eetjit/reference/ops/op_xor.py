"""Xor: C = A xor B elementwise (broadcasting), bool output."""
import numpy as np

from eetjit.reference.registry import register


def xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.logical_xor(a, b), dtype=np.bool_)


@register("Xor")
def _xor(inputs, attrs, opset):
    return [xor(inputs[0], inputs[1])]
