import numpy as np

from eetjit.fused._math import activation
from eetjit.reference.registry import register


def linear(x, W_KN, bias=None, act="none"):
    y = np.matmul(x, W_KN)                      # (..., N)
    if bias is not None:
        y = y + bias
    return activation(y, act)


@register("Linear", "eet")
def _linear(inputs, attrs, opset):
    x, W = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    y = linear(x, W, bias, attrs.get("activation", "none"))
    split = attrs.get("split")
    if not split:
        return [y]
    return np.split(y, np.cumsum(split)[:-1], axis=-1)


@register("SwiGLU", "eet")
def _swiglu(inputs, attrs, opset):
    x, Wg, Wu = inputs[0], inputs[1], inputs[2]
    bg = inputs[3] if len(inputs) > 3 else None
    bu = inputs[4] if len(inputs) > 4 else None
    return [linear(x, Wg, bg, "silu") * linear(x, Wu, bu)]
