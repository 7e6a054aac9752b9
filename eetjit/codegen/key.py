"""The specialization key of a generated kernel: everything that changes the code Numba produces.

One function builds it (`specialization_key`); the caches (memory and disk) and the rendered file's name all
derive from it, so two requests share a kernel exactly when they would generate the same machine code.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SEQ_BUCKET = 16


def seq_bucket(S: int) -> int:
    """The sequence-length bucket of S: the next power of two >= S, at least 16.

    Kernels take the length as a runtime argument; the bucket is only a specialization hint (scratch sizes,
    rows per parallel work item), so every length inside one bucket shares one compiled kernel."""
    S = int(S)
    if S < 0:
        raise ValueError(f"sequence length must be >= 0, got {S}")
    bucket = MIN_SEQ_BUCKET
    while bucket < S:
        bucket *= 2
    return bucket


@dataclass(frozen=True)
class SpecKey:
    """A kernel's identity. `digest` names its rendered file and module."""
    op: str
    target: str
    dtype: str
    consts: tuple[tuple[str, Any], ...]  # sorted (name, value): the values baked into the source as literals
    seq_bucket: int | None
    template_sha256: str                 # the template and every file it imports (the macros)
    versions: tuple[tuple[str, str], ...]
    device: tuple | None                 # compute capability for cuda; None for the CPU (Numba's own cache
                                         # index already keys the machine code on the CPU model and features)

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:24]

    @property
    def module_name(self) -> str:
        return f"eetjit_{self.target}_{self.op}_{self.digest}"


def specialization_key(op: str, target: str, dtype, consts: dict, seq_bucket: int | None,
                       template_source: str) -> SpecKey:
    """Build the key of kernel `op` for `target` ("cpu" | "cuda"), storage `dtype`, the specialization
    constants `consts` (name -> int/float/bool/str, baked into the source), the sequence bucket (None for
    kernels that do not depend on the sequence length) and the full template source (template + macros)."""
    return SpecKey(
        op=str(op),
        target=str(target),
        dtype=np.dtype(dtype).name,
        consts=tuple(sorted((str(k), canonical(v)) for k, v in consts.items())),
        seq_bucket=None if seq_bucket is None else int(seq_bucket),
        template_sha256=hashlib.sha256(template_source.encode()).hexdigest(),
        versions=library_versions(target),
        device=device_capability(target),
    )


def canonical(value):
    """A const as a plain Python value whose repr is stable (NumPy scalars, lists -> int/float/bool/tuple)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(canonical(v) for v in value)
    raise TypeError(f"specialization constant {value!r} ({type(value).__name__}) is not a plain value")


@functools.lru_cache(maxsize=None)
def library_versions(target: str) -> tuple[tuple[str, str], ...]:
    """Versions of the libraries that turn the rendered source into machine code."""
    names = ["numba", "numpy"] + (["numba-cuda"] if target == "cuda" else [])
    out = []
    for name in names:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "absent"))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def device_capability(target: str) -> tuple | None:
    if target != "cuda":
        return None
    from eetjit.backends.cuda_device import simulator_on
    if not simulator_on():      # CuPy's, as Numba would report it: no Numba import for a key (cuda_direct)
        import cupy
        cc = int(cupy.cuda.Device().compute_capability)
        return (cc // 10, cc % 10)
    from numba import cuda      # the simulator's device
    return tuple(cuda.get_current_device().compute_capability)
