"""Split: cut a tensor into pieces along ``axis``.

Piece sizes come from, in order of precedence:
  * ``split`` — an attribute before opset 13, an optional int64 input from opset 13;
  * ``num_outputs`` (opset 18): pieces of ceil(dim / n), the last one smaller if needed;
  * otherwise equal pieces, one per node output. The kernel cannot see the node, so the
    caller passes the output count as the private attribute ``_num_outputs``.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list, normalize_axis, opt


def split(x: np.ndarray, axis: int = 0, sizes=None, num_outputs: int | None = None) -> list:
    x = np.asarray(x)
    axis = normalize_axis(axis, x.ndim, "Split")
    dim = x.shape[axis]
    if sizes is None:
        if not num_outputs or num_outputs < 1:
            raise ValueError("Split: need 'split' sizes, 'num_outputs', or the caller's '_num_outputs'")
        chunk = -(-dim // num_outputs)                       # ceil(dim / n)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num_outputs)]
    sizes = [int(s) for s in sizes]
    if sum(sizes) != dim or any(s < 0 for s in sizes):
        raise ValueError(f"Split: sizes {sizes} do not add up to dimension {dim}")
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * x.ndim
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(int(lo), int(hi))
        out.append(np.array(x[tuple(index)], copy=True))
    return out


@register("Split")
def _split(inputs, attrs, opset):
    axis = int(attrs.get("axis", 0))
    if opset < 13:
        sizes = attrs.get("split")
        if opset < 2 and sizes is None and opt(inputs, 1) is not None:
            sizes = int_list(inputs[1])
    else:
        s = opt(inputs, 1)
        sizes = None if s is None else int_list(s)
    n = attrs.get("num_outputs") if opset >= 18 else None
    if sizes is not None and n is not None:
        raise ValueError("Split: 'split' and 'num_outputs' cannot both be given")
    if sizes is None and n is None:
        n = attrs.get("_num_outputs")
        if n is not None and sizes is None:
            # equal split (pre-18 semantics) must divide evenly
            dim = np.shape(inputs[0])[normalize_axis(axis, np.ndim(inputs[0]), "Split")]
            if opset < 18 and dim % int(n):
                raise ValueError(f"Split: dimension {dim} is not divisible into {n} equal parts")
    return split(inputs[0], axis, sizes, None if n is None else int(n))
