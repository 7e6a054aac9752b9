"""Execution backends: each binds a fused graph node to its generated kernel (`prepare`) and runs it.

`get_backend("cpu")` is the Numba CPU backend (eetjit.backends.cpu); `get_backend("cuda")` the Numba CUDA +
cuBLASLt one (eetjit.backends.cuda; under NUMBA_ENABLE_CUDASIM=1 it runs in Numba's CUDA simulator).
"""
from __future__ import annotations

from eetjit.errors import InputError


def get_backend(device: str = "cpu", **options):
    """The backend object for `device` ("cpu" | "cuda"); options go to its constructor (dtype, verbose, ...)."""
    if device == "cpu":
        from eetjit.backends.cpu import CpuBackend
        return CpuBackend(**options)
    if device == "cuda":
        from eetjit.backends.cuda import CudaBackend
        return CudaBackend(**options)
    raise InputError(f"no backend for device {device!r}; expected 'cpu' or 'cuda'")


__all__ = ["get_backend"]
