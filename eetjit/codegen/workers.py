"""Compiling CUDA kernels in other processes, so that a cold start compiles them side by side.

Numba compiles one kernel at a time (its compiler is Python under a global lock), and a cold start of a
GPT-2 decode needs ~17 kernels of 1-9 s each. The CUDA generator therefore first runs its prompt pass and decode
step dry (`Device.deferring`: nothing launches, each kernel not yet compiled for its argument types is listed),
drops what Numba's disk cache already holds (loading it into this process there, once), and hands the rest to
`compile_elsewhere`: worker processes (plain `python -c`, so a user's script is never re-imported as with
multiprocessing's spawn) each import the rendered kernel files of their share and compile them for the listed
types. Numba writes each result to its disk cache beside the file, where the real run's first launch loads it.
Whatever a worker could not compile is compiled by that launch as before, so a failure here costs time, never
correctness.

EETJIT_COMPILE_WORKERS sets how many processes (default: up to 8, at most the CPU count - 1; 0 turns this off).
Each worker opens a CUDA context of its own (Numba compiles for the current device) for the length of its share.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS_ENV = "EETJIT_COMPILE_WORKERS"
MAX_WORKERS = 8
TIMEOUT_S = 600.0     # for all workers together; what is left then is compiled by the first launches

_CHILD = "from eetjit.codegen.workers import _child_main; _child_main()"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(jobs: int) -> int:
    """Processes for `jobs` kernels: EETJIT_COMPILE_WORKERS if set (0: none), else min(8, CPUs - 1, jobs)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            want = int(raw)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={raw!r} is not a number of processes") from None
    else:
        want = min(MAX_WORKERS, usable_cpus() - 1)
    return max(0, min(want, jobs))


def pending_jobs(recorded) -> list[tuple[str, str, list]]:
    """(module name, rendered file, [argument types]) per kernel of the (dispatcher, types) pairs that
    Device.deferring recorded, leaving out what is compiled in this process or held by Numba's disk cache."""
    from eetjit.codegen.cache import kernel_path
    by_kernel: dict[int, tuple] = {}
    for kernel, types in recorded:
        if types is None or types in kernel.overloads:
            continue
        entry = by_kernel.setdefault(id(kernel), (kernel, []))
        if types not in entry[1]:
            entry[1].append(types)
    jobs = []
    for kernel, sigs in by_kernel.values():
        todo = [t for t in sigs if not _on_disk(kernel, t)]
        if todo:
            jobs.append((kernel.py_func.__module__, str(kernel_path(kernel)), todo))
    return jobs


def _on_disk(kernel, types) -> bool:
    """Whether Numba's disk cache holds the kernel for these types. If so, it is loaded into this process now,
    once, as its first launch would have: the dispatcher's own compile with compiling disabled, which loads from
    the disk cache or raises (the miss it counted is taken back, so codegen.stats() counts only real compiles)."""
    try:
        can, misses = kernel._can_compile, kernel._cache_misses[types]
    except (AttributeError, TypeError):     # a Numba without these internals: the workers look
        return False
    kernel._can_compile = False
    try:
        kernel.compile(types)
        return True
    except Exception:       # not on disk (or a Numba without these internals): the workers compile it
        kernel._cache_misses[types] = misses
        return False
    finally:
        kernel._can_compile = can


def compile_elsewhere(jobs, workers: int, timeout: float = TIMEOUT_S) -> dict:
    """Compile the jobs of `pending_jobs` in `workers` processes (round robin) and wait for them, at most
    `timeout` seconds (then the rest are stopped and count as failed).
    Returns {"jobs", "workers", "seconds", "failed": [module names]}."""
    t0 = time.perf_counter()
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    failed, procs = [], []
    with tempfile.TemporaryDirectory(prefix="eetjit-compile-") as tmp:
        try:
            for i in range(workers):
                share = jobs[i::workers]
                if not share:
                    continue
                path = Path(tmp) / f"share{i}.pickle"
                path.write_bytes(pickle.dumps(share))
                p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                procs.append((p, share, path.with_suffix(".done")))
            for p, share, result in procs:
                try:
                    p.wait(timeout=max(0.1, timeout - (time.perf_counter() - t0)))
                    done = set(pickle.loads(result.read_bytes())) if p.returncode == 0 else set()
                except Exception:       # past the time limit (killed below), or no readable result
                    done = set()
                failed += [name for name, _, _ in share if name not in done]
        finally:        # a worker past the time limit, or any left by an error or an interrupt here
            for p, _, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return {"jobs": len(jobs), "workers": len(procs), "seconds": time.perf_counter() - t0, "failed": failed}


def _child_main() -> None:
    """A worker: compile each (module, file, types) of the pickled share named by argv[1]; write the names of
    the modules that compiled beside it (`.done`; a file, since a library may write to the output descriptor)."""
    share_file = Path(sys.argv[1])
    share = pickle.loads(share_file.read_bytes())
    from eetjit.codegen.cache import _import
    done = []
    for name, path, sigs in share:
        try:
            kernel = _import(name, Path(path)).kernel
            for types in sigs:
                kernel.compile(types)
            done.append(name)
        except Exception:
            pass
    share_file.with_suffix(".done").write_bytes(pickle.dumps(done))
