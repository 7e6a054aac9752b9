from eetjit.fused._math import layer_norm, rms_norm
from eetjit.reference.registry import register


@register("LayerNorm", "eet")
def _layer_norm(inputs, attrs, opset):
    x, gamma = inputs[0], inputs[1]
    beta = inputs[2] if len(inputs) > 2 else None
    return [layer_norm(x, gamma, beta, attrs.get("epsilon", 1e-5))]


@register("AddLayerNorm", "eet")
def _add_layer_norm(inputs, attrs, opset):
    a, b, gamma = inputs[0], inputs[1], inputs[2]
    beta = inputs[3] if len(inputs) > 3 else None
    s = a + b                                   # the residual sum, an output of its own (the next residual)
    return [layer_norm(s, gamma, beta, attrs.get("epsilon", 1e-5)), s]


@register("RMSNorm", "eet")
def _rms_norm(inputs, attrs, opset):
    return [rms_norm(inputs[0], inputs[1], attrs.get("epsilon", 1e-6))]


@register("AddRMSNorm", "eet")
def _add_rms_norm(inputs, attrs, opset):
    s = inputs[0] + inputs[1]
    return [rms_norm(s, inputs[2], attrs.get("epsilon", 1e-6)), s]
