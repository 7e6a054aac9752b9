"""ConstantOfShape: a tensor of the given shape filled with ``value`` (default float32 0)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list


def constant_of_shape(shape: np.ndarray, value: np.ndarray | None = None) -> np.ndarray:
    # shape: int64 [rank] -> tensor of that shape; dtype and fill come from the 1-element ``value``
    if value is None:
        value = np.zeros((1,), dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"ConstantOfShape: 'value' must hold one element, got shape {value.shape}")
    dims = int_list(shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"ConstantOfShape: negative dimension in {dims}")
    return np.full(dims, value.reshape(()), dtype=value.dtype)


@register("ConstantOfShape")
def _constant_of_shape(inputs, attrs, opset):
    return [constant_of_shape(inputs[0], attrs.get("value"))]
