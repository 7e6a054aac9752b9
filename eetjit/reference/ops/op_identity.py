"""Identity: y = x (a copy, so callers may mutate outputs freely)."""
import numpy as np

from eetjit.reference.registry import register


def identity(x):
    # tensors are copied; sequence/optional values (opset 14+) pass through as they are
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.array(x, copy=True)
    return x


@register("Identity")
def _identity(inputs, attrs, opset):
    return [identity(inputs[0])]
