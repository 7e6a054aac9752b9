"""IsInf: bool mask of infinite elements, optionally only +inf or only -inf."""
import numpy as np

from eetjit.reference.registry import register


def is_inf(x: np.ndarray, detect_negative: int = 1, detect_positive: int = 1) -> np.ndarray:
    x = np.asarray(x)
    inf = np.isinf(x)
    keep = np.zeros(x.shape, dtype=np.bool_)
    if detect_positive:
        keep |= inf & (x > 0)
    if detect_negative:
        keep |= inf & (x < 0)
    return keep


@register("IsInf")
def _is_inf(inputs, attrs, opset):
    return [is_inf(inputs[0], attrs.get("detect_negative", 1), attrs.get("detect_positive", 1))]
