"""Validation of `run` feeds against the graph's declared inputs (names, dtypes, ranks, dims)."""
from __future__ import annotations

import numpy as np

from eetjit.errors import InputError
from eetjit.ir import Graph


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def validate_feeds(graph: Graph, feeds: dict) -> dict[str, np.ndarray]:
    """Return the feeds as NumPy arrays, or raise InputError naming the input, expected and received."""
    if not isinstance(feeds, dict):
        raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    names = [v.name for v in graph.inputs]
    unknown = [k for k in feeds if k not in names]
    if unknown:
        raise InputError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"missing input(s) {missing}; the model's inputs are {names}")
    out: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for v in graph.inputs:
        x = feeds[v.name]
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as e:
                raise InputError(f"input {v.name!r}: cannot convert {type(x).__name__} to an array ({e})") from None
        if v.dtype is not None and x.dtype != v.dtype:
            raise InputError(f"input {v.name!r}: expected dtype {v.dtype.name}, received {x.dtype.name}")
        if v.shape is not None:
            if x.ndim != len(v.shape):
                raise InputError(f"input {v.name!r}: expected rank {len(v.shape)} {_fmt_shape(v.shape)}, "
                                 f"received rank {x.ndim} {list(x.shape)}")
            for axis, (want, got) in enumerate(zip(v.shape, x.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(f"input {v.name!r}: dim {axis} must be {want} {_fmt_shape(v.shape)}, "
                                     f"received {list(x.shape)}")
                if isinstance(want, str):
                    seen = symbols.get(want)
                    if seen is not None and seen[0] != got:
                        raise InputError(f"input {v.name!r}: dim {axis} ({want!r}) is {got} but input "
                                         f"{seen[1]!r} gives {want!r} = {seen[0]}")
                    symbols.setdefault(want, (got, v.name))
        if x.dtype.kind in "iu" and x.size == 0 and x.ndim and 0 in x.shape:
            raise InputError(f"input {v.name!r}: empty tensor {list(x.shape)}")
        out[v.name] = np.ascontiguousarray(x)
    return out
