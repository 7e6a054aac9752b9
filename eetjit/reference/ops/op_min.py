"""Min: elementwise minimum over a variable number of broadcastable inputs."""
from functools import reduce

import numpy as np

from eetjit.reference.registry import register


def min_(*xs: np.ndarray) -> np.ndarray:
    # NaN propagates (np.minimum); output shape is the broadcast of all input shapes
    if not xs:
        raise ValueError("Min: needs at least one input")
    out = reduce(np.minimum, xs[1:], np.asarray(xs[0]))
    return np.array(np.broadcast_to(out, np.broadcast_shapes(*(np.shape(x) for x in xs))), dtype=xs[0].dtype)


@register("Min")
def _min(inputs, attrs, opset):
    return [min_(*[x for x in inputs if x is not None])]
