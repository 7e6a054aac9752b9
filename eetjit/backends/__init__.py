"""Execution backends: each binds a fused graph node to its generated kernel (`prepare`) and runs it.

`get_backend("cpu")` is the Numba CPU backend (eetjit.backends.cpu); the CUDA one comes later.
"""
from __future__ import annotations

from eetjit.errors import InputError


def get_backend(device: str = "cpu", **options):
    """The backend object for `device` ("cpu"); options go to its constructor (dtype, verbose, ...)."""
    if device == "cpu":
        from eetjit.backends.cpu import CpuBackend
        return CpuBackend(**options)
    raise InputError(f"no backend for device {device!r}; expected 'cpu'")


__all__ = ["get_backend"]
