"""Code generation: specialized kernel source from templates, compiled with Numba and cached.

    key = specialization_key(op, target, dtype, consts, seq_bucket, template_source(op, target))
    fn = get_kernel(op, consts, target="cpu", dtype="float32", seq_bucket=seq_bucket(S))

`templates/<target>/<op>.py.j2` is rendered with the constants baked in as literals, written to
`<cache>/kernels/<target>/<module>.py` (atomically; <cache> is $EETJIT_CACHE_DIR or the user cache folder),
imported by path and compiled by Numba, whose `cache=True` object cache lands in `__pycache__` beside it.
$EETJIT_DUMP_DIR receives a copy of every kernel source; $EETJIT_TEMPLATES_DIR replaces the shipped templates.
`stats()` counts renders, compiles and disk-cache loads (tests assert on it). `workers` compiles CUDA kernels in
other processes into that cache (the CUDA generator's cold start). On a GPU, `get_direct` hands the backend a
kernel that launches the cubin cached under `<cache>/kernels/cuda/direct/` without Numba where one was written
(eetjit.backends.cuda_direct), and `get_kernel`'s dispatcher otherwise.
"""
from __future__ import annotations

import sys

from eetjit.codegen.cache import (CACHE_ENV, DUMP_ENV, cache_dir, clear_memory_cache, get_direct, get_kernel,
                                  kernel_dir, kernel_path, reset_stats, stats)
from eetjit.codegen.key import SpecKey, seq_bucket, specialization_key
from eetjit.codegen.render import TEMPLATES_ENV, render, template_source, templates_root


def progress(iterable, *, total: int | None = None, desc: str = "eetjit: compiling kernels",
             verbose: bool = True):
    """A tqdm bar over `iterable`, silent with verbose=False or when stderr is not a terminal."""
    from tqdm import tqdm
    disable = not verbose or not (sys.stderr is not None and sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, unit="node")


__all__ = ["specialization_key", "SpecKey", "seq_bucket", "get_kernel", "get_direct", "stats", "reset_stats",
           "clear_memory_cache", "cache_dir", "kernel_dir", "kernel_path", "template_source", "templates_root",
           "render", "progress", "CACHE_ENV", "DUMP_ENV", "TEMPLATES_ENV"]
