"""Max: elementwise maximum over a variable number of broadcastable inputs."""
from functools import reduce

import numpy as np

from eetjit.reference.registry import register


def max_(*xs: np.ndarray) -> np.ndarray:
    # NaN propagates (np.maximum); output shape is the broadcast of all input shapes
    if not xs:
        raise ValueError("Max: needs at least one input")
    out = reduce(np.maximum, xs[1:], np.asarray(xs[0]))
    return np.array(np.broadcast_to(out, np.broadcast_shapes(*(np.shape(x) for x in xs))), dtype=xs[0].dtype)


@register("Max")
def _max(inputs, attrs, opset):
    return [max_(*[x for x in inputs if x is not None])]
