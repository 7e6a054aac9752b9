"""Where: out = X where condition else Y, with three-way broadcasting."""
import numpy as np

from eetjit.reference.registry import register


def where(condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(np.where(np.asarray(condition, dtype=np.bool_), x, y), dtype=np.asarray(x).dtype)


@register("Where")
def _where(inputs, attrs, opset):
    return [where(inputs[0], inputs[1], inputs[2])]
