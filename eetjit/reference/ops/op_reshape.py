"""Reshape: same data, new shape.

In ``shape`` a -1 is inferred from the remaining size (at most one), and a 0 copies the
input's dimension at that position unless ``allowzero=1`` (opset 14+), where it is a real 0.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list


def reshape(data: np.ndarray, shape, allowzero: int = 0) -> np.ndarray:
    data = np.asarray(data)
    dims = int_list(shape)
    if allowzero and 0 in dims and -1 in dims:
        raise ValueError("Reshape: with allowzero=1 the shape cannot contain both 0 and -1")
    out = []
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:
            if i >= data.ndim:
                raise ValueError(f"Reshape: 0 at position {i} but input has rank {data.ndim}")
            out.append(data.shape[i])
        elif d < -1:
            raise ValueError(f"Reshape: invalid dimension {d} in {dims}")
        else:
            out.append(d)
    if out.count(-1) > 1:
        raise ValueError(f"Reshape: more than one -1 in {dims}")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or data.size % known:
            raise ValueError(f"Reshape: cannot infer -1 for size {data.size} into {dims}")
        out[out.index(-1)] = data.size // known
    if int(np.prod(out, dtype=np.int64)) != data.size:
        raise ValueError(f"Reshape: cannot reshape {data.shape} into {dims}")
    return np.array(data.reshape(out), copy=True)


@register("Reshape")
def _reshape(inputs, attrs, opset):
    if opset < 5:
        return [reshape(inputs[0], attrs.get("shape", []))]
    return [reshape(inputs[0], inputs[1], attrs.get("allowzero", 0) if opset >= 14 else 0)]
