"""Dropout. Inference (the default) is the identity with an all-True mask.

Outputs are always [output, mask]; the caller keeps the ones the node names.
Opset >= 12: ``ratio`` and ``training_mode`` are optional inputs, ``seed`` an attribute.
Opset < 12: ``ratio`` is an attribute and there is no training mode (opset < 7: ``is_test``).
The mask is bool from opset 10, and has the data's dtype before. Opsets < 12 do not say
what the inference-mode mask holds; onnxruntime returns all zeros/False there, and so
does this kernel (from opset 12 on, inference gives an all-True mask).
In training mode output = data * mask / (1 - ratio) with a random keep-mask.
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import opt


def dropout(data: np.ndarray, ratio: float = 0.5, training: bool = False, seed: int | None = None):
    data = np.asarray(data)
    if not training or ratio == 0:
        return np.array(data, copy=True), np.ones(data.shape, dtype=np.bool_)
    if not 0 <= ratio < 1:
        raise ValueError(f"Dropout: ratio must be in [0, 1), got {ratio}")
    rng = np.random.default_rng(seed)
    keep = rng.uniform(size=data.shape) >= ratio
    scale = 1.0 / (1.0 - ratio)
    return np.asarray(data * keep * scale, dtype=data.dtype), keep


@register("Dropout")
def _dropout(inputs, attrs, opset):
    x = inputs[0]
    if opset >= 12:
        r, t = opt(inputs, 1), opt(inputs, 2)
        ratio = 0.5 if r is None else float(np.asarray(r).reshape(()))
        training = False if t is None else bool(np.asarray(t).reshape(()))
        y, mask = dropout(x, ratio, training, attrs.get("seed"))
    else:
        training = opset < 7 and not attrs.get("is_test", 0)
        y, mask = dropout(x, float(attrs.get("ratio", 0.5)), training)
        if not training:
            mask = np.zeros_like(mask)
    if opset < 10:
        mask = mask.astype(np.asarray(x).dtype)
    return [y, mask]
