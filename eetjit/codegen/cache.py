"""The kernel caches: in memory per device (key -> compiled function), on disk as the rendered `.py` file
named by the key's digest plus Numba's own object cache beside it (`__pycache__/*.nbi|*.nbc`), so a second
process imports the file and loads the machine code instead of compiling. On a GPU, `direct/` beside them holds
each launched kernel's cubin per compute capability and argument spec, which a later process launches without
importing Numba (eetjit.backends.cuda_direct; `get_direct`)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

from eetjit.codegen.key import SpecKey, specialization_key
from eetjit.codegen.render import render, template_source

CACHE_ENV = "EETJIT_CACHE_DIR"  # the cache root; default platformdirs.user_cache_dir("eetjit")
DUMP_ENV = "EETJIT_DUMP_DIR"    # also copy every kernel source there, for reading

_lock = threading.RLock()
_memory: dict[str, dict[SpecKey, object]] = {}  # device -> key -> dispatcher
_direct: dict[str, dict[SpecKey, object]] = {}  # device -> key -> cuda_direct.DirectKernel
_dispatchers: list = []                         # every dispatcher this process loaded (stats() sums them)
_renders = 0
_baseline = {"renders": 0, "compiles": 0, "disk_hits": 0}


def cache_dir() -> Path:
    """The cache root: $EETJIT_CACHE_DIR, else the user cache folder of eetjit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs
    return Path(platformdirs.user_cache_dir("eetjit"))


def kernel_dir(target: str = "cpu") -> Path:
    return cache_dir() / "kernels" / target


def get_kernel(op: str, consts: dict, *, target: str = "cpu", dtype="float32", seq_bucket: int | None = None,
               device: str | None = None, templates_dir=None, eager: bool = True):
    """The compiled function of template `op` specialized on `consts` (and dtype, sequence bucket).

    Looks in the memory cache of `device` (default: the target), then on disk (the rendered file of the key),
    else renders the template and writes the file atomically. The file is imported by path; its
    `kernel` (a Numba dispatcher) is returned. With `eager`, the signatures the module lists are compiled
    now (or loaded from Numba's disk cache) instead of at the first call."""
    global _renders
    with _lock:
        key = _key(op, target, dtype, consts, seq_bucket, templates_dir)
        memory = _memory.setdefault(device or target, {})
        fn = memory.get(key)
        if fn is not None:
            return fn
        path = kernel_dir(target) / f"{key.module_name}.py"
        if not path.is_file():
            _atomic_write(path, render(key, templates_dir))
            _renders += 1
        if os.environ.get(DUMP_ENV):
            dump = Path(os.environ[DUMP_ENV]) / path.name
            if not dump.is_file():
                _atomic_write(dump, path.read_text())
        module = _import(key.module_name, path)
        fn = module.kernel
        if fn not in _dispatchers:
            _dispatchers.append(fn)
        if eager:
            for signature in module.SIGNATURES:
                fn.compile(signature)
        memory[key] = fn
        return fn


def get_direct(op: str, consts: dict, *, dtype="float32", seq_bucket: int | None = None, device: str | None = None,
               templates_dir=None):
    """CUDA on a GPU: the kernel of template `op` for `consts` as a cuda_direct.DirectKernel, which launches the
    cubins cached for it (kernels/cuda/direct/) without Numba and falls back to get_kernel's dispatcher (imported
    when first needed) for argument specs not cached yet."""
    from eetjit.backends.cuda_direct import DirectKernel
    with _lock:
        key = _key(op, "cuda", dtype, consts, seq_bucket, templates_dir)
        memory = _direct.setdefault(device or "cuda", {})
        fn = memory.get(key)
        if fn is None:
            consts = dict(consts)
            fn = memory[key] = DirectKernel(
                key.module_name, kernel_dir("cuda") / "direct", key.device,
                lambda: get_kernel(op, consts, target="cuda", dtype=dtype, seq_bucket=seq_bucket, device=device,
                                   templates_dir=templates_dir))
        return fn


def _key(op, target, dtype, consts, seq_bucket, templates_dir) -> SpecKey:
    return specialization_key(op, target, dtype, consts, seq_bucket, template_source(op, target, templates_dir))


def kernel_path(fn) -> Path:
    """The rendered source file a kernel was imported from."""
    return Path(getattr(fn, "py_func", fn).__code__.co_filename)


def stats() -> dict:
    """{"renders", "compiles", "disk_hits"} since the last reset_stats().

    renders: templates rendered (a kernel file that was not on disk yet). compiles and disk_hits come from
    Numba: each dispatcher counts, per signature, `stats.cache_misses` (compiled in this process: not in
    Numba's disk cache) and `stats.cache_hits` (machine code loaded from the disk cache). A dispatcher only
    counts the first time a signature is needed in this process (eager compile or first call); later calls
    and memory-cache hits count nothing."""
    with _lock:
        hits = misses = 0
        for fn in _dispatchers:
            s = getattr(fn, "stats", None)   # the CUDA simulator's kernels keep no stats
            if s is not None:
                hits += sum(s.cache_hits.values())
                misses += sum(s.cache_misses.values())
        return {"renders": _renders - _baseline["renders"], "compiles": misses - _baseline["compiles"],
                "disk_hits": hits - _baseline["disk_hits"]}


def reset_stats() -> None:
    with _lock:
        _baseline.update({k: 0 for k in _baseline})
        _baseline.update(stats())


def clear_memory_cache() -> None:
    """Forget the in-memory kernels (the imported modules and Numba's own state stay)."""
    with _lock:
        _memory.clear()
        _direct.clear()


def _atomic_write(path: Path, text: str | bytes) -> None:
    """Write via a temp file + os.replace, so a reader never sees half a file (text as UTF-8, or bytes).

    The mtime is set from the content hash: Numba's cache index is keyed on the source file's (mtime, size),
    so when two processes render the same kernel and both replace the file, identical bytes get an identical
    stamp and neither invalidates the other's compiled code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        stamp = 1_000_000_000 + int(hashlib.sha256(data).hexdigest()[:7], 16)
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _import(name: str, path: Path):
    """Import a rendered file under a stable module name (its key digest): a real file with a real
    `__file__`, which Numba's file cache needs, and real tracebacks."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == str(path):
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
