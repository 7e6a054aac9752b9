"""Tile: repeat the input ``repeats[i]`` times along each axis i (len(repeats) == rank)."""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list


def tile(x: np.ndarray, repeats) -> np.ndarray:
    x = np.asarray(x)
    reps = int_list(repeats)
    if len(reps) != x.ndim:
        raise ValueError(f"Tile: repeats {reps} must have one entry per axis (rank {x.ndim})")
    if any(r < 0 for r in reps):
        raise ValueError(f"Tile: negative repeat in {reps}")
    return np.tile(x, reps)


@register("Tile")
def _tile(inputs, attrs, opset):
    return [tile(inputs[0], inputs[1])]
