"""Transpose: permute dimensions; the default ``perm`` reverses them."""
import numpy as np

from eetjit.reference.registry import register


def transpose(x: np.ndarray, perm=None) -> np.ndarray:
    x = np.asarray(x)
    if perm is None:
        perm = list(range(x.ndim))[::-1]
    perm = [int(p) for p in perm]
    if sorted(p % x.ndim if x.ndim else p for p in perm) != list(range(x.ndim)):
        raise ValueError(f"Transpose: perm {perm} is not a permutation of rank {x.ndim}")
    return np.ascontiguousarray(np.transpose(x, perm))


@register("Transpose")
def _transpose(inputs, attrs, opset):
    return [transpose(inputs[0], attrs.get("perm"))]
