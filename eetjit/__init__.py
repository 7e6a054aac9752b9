"""eetjit: an ONNX-to-Numba compiler for transformer inference (EET-style pre-padding generation).

Public API (see the README): `load`, `fuse`, `compile`, `Session`, `ModelError`, `InputError`.
"""
from __future__ import annotations

from eetjit.errors import EetjitError, ExecutionError, InputError, ModelError
from eetjit.frontend import load
from eetjit import resources  # noqa: F401  (eetjit.resources.default_model etc.)
from eetjit.ir import Graph, Node, Value
from eetjit import rewrite as _rewrite
from eetjit.rewrite import FusionReport, fuse
from eetjit.runtime import Session

__version__ = "0.1.0"


def compile(model, device: str = "cpu", dtype: str = "float32", max_batch: int = 8, max_seq_len: int = 1024,
            verbose: bool = True, fuse: bool = True) -> Session:
    """Load (a path) or take (a Graph, fused in place) a model, fuse it, and return a Session for
    `device`/`dtype` whose KV cache holds `max_batch` sequences of `max_seq_len` tokens."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise InputError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    setup = _start_device_setup(device)
    try:
        graph = model if isinstance(model, Graph) else load(model)
        report = _rewrite.fuse(graph) if fuse else None
    finally:
        if setup is not None:
            setup.join()
    return Session(graph, report, device=device, dtype=dtype, max_batch=max_batch, max_seq_len=max_seq_len,
                   verbose=verbose)


def _direct_cubins_cached() -> bool:
    """Whether the kernel cache holds a cubin for this card's compute capability, launched without Numba
    (eetjit.backends.cuda_direct): then the start is most likely warm. A start of a model or shape not cached yet
    imports Numba at its first such kernel instead, on the calling thread."""
    import os
    from eetjit.codegen import kernel_dir
    from eetjit.codegen.key import device_capability
    mark = "-sm" + "".join(map(str, device_capability("cuda"))) + "-"
    try:
        with os.scandir(kernel_dir("cuda") / "direct") as entries:
            return any(mark in e.name and e.name.endswith(".cubin") for e in entries)
    except OSError:
        return False


def _start_device_setup(device: str):
    """CUDA: import CuPy, create the context and stream and, unless the kernel cache holds cubins that launch without
    Numba (a warm start: eetjit.backends.cuda_direct), import Numba's CUDA target and load its lowering
    registries (which its first kernel load from the disk cache would do, ~0.5-0.7 s on the GPU machine) in a
    thread, while this one reads and fuses the model (benchmarks/gpu/NOTES.md, sessions 4, 16 and 19). nvmath is left
    to the first GEMM that goes to cuBLASLt or batched cuBLAS (GPT-2 in float16 at batch 1 with a prompt of up to
    32 tokens has none; float32 GEMMs of 2 rows or more and untied LM heads do, and import it in the first generate).
    Best effort: a failure here is left for the Session to meet, and report, on its own thread."""
    import os
    if device != "cuda" or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return None
    import sys
    import threading
    # the caller's current CUDA device (CuPy's is per thread): the Device is made on it, as it would be here
    cupy = sys.modules.get("cupy")
    device_id = None
    if cupy is not None:
        try:
            device_id = cupy.cuda.runtime.getDevice()
        except Exception:   # noqa: BLE001
            device_id = None

    def setup():
        try:
            if device_id is not None:
                sys.modules["cupy"].cuda.Device(device_id).use()
            from eetjit.backends.cuda_device import get_device
            dev = get_device()
            if dev.direct is not None and _direct_cubins_cached():
                return      # kernels launch without Numba (cuda_direct); one that cannot imports it then
            from numba.cuda.core.compiler_lock import global_compiler_lock
            from numba.cuda.descriptor import cuda_target
            with global_compiler_lock:          # as Numba itself refreshes (another thread may be compiling)
                cuda_target.target_context.refresh()
        except Exception:   # noqa: BLE001 - reported by the Session when it needs the device
            pass
    thread = threading.Thread(target=setup, name="eetjit-cuda-setup", daemon=True)
    thread.start()
    return thread


__all__ = ["load", "fuse", "compile", "FusionReport", "Session", "Graph", "Node", "Value", "EetjitError", "ModelError", "InputError",
           "ExecutionError", "__version__"]
