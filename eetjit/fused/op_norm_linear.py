import numpy as np

from eetjit.fused._math import layer_norm, rms_norm
from eetjit.fused.op_linear import linear
from eetjit.reference.registry import register


@register("NormLinear", "eet")
def _norm_linear(inputs, attrs, opset):
    a, b, gamma, beta, W = inputs[:5]
    bias = inputs[5] if len(inputs) > 5 else None
    add = bool(attrs.get("add", 0))
    W0 = inputs[6] if len(inputs) > 6 else None
    if W0 is not None:                          # the summand's own Linear (eetjit.plan.norm_linear.fold_producer_linear)
        a = linear(a, W0, inputs[7] if len(inputs) > 7 else None, "none")
    x = a + b if add else a                     # the residual sum, an output of its own when add
    if attrs["norm"] == "layer":
        h = layer_norm(x, gamma, beta, attrs.get("epsilon", 1e-5))
    else:
        h = rms_norm(x, gamma, attrs.get("epsilon", 1e-6))
    y = linear(h, W, bias, attrs.get("activation", "none"))
    split = attrs.get("split")
    ys = np.split(y, np.cumsum(split)[:-1], axis=-1) if split else [y]
    return ys + ([x] if add else [])
