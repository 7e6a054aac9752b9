"""One compile, timed, in a process of its own: `python -m benchmarks.compile_probe MODEL.onnx`.

The forward suite runs it twice with the same fresh EETJIT_CACHE_DIR: cold (nothing on disk: every kernel
rendered and compiled by Numba) and warm (the rendered files and Numba's object cache are reused).
Prints one JSON line: import_s (import eetjit), compile_s (eetjit.compile), first_run_s (the first forward
pass at batch 1, sequence 128: attention kernels of a new sequence bucket compile here, and the memory
plan is made), total_s (process start to first result), and the kernel cache's counters.
"""
from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0]
    seq = int(argv[1]) if len(argv) > 1 else 128
    import numpy as np
    t = time.perf_counter()
    import eetjit
    from eetjit.codegen import cache
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    sess = eetjit.compile(path, device="cpu", max_batch=4, max_seq_len=1024, verbose=False)
    compile_s = time.perf_counter() - t
    s = sess.structure
    rng = np.random.default_rng(1)
    ids = rng.integers(0, s.vocab, (1, seq)).astype(np.int64)
    feeds = {s.input_ids: ids}
    names = [v.name for v in sess.get_inputs()]
    if s.attention_mask is not None:
        feeds[s.attention_mask] = np.ones_like(ids)
    if s.token_type_ids is not None:
        feeds[s.token_type_ids] = rng.integers(0, 2, ids.shape).astype(np.int64)
    feeds = {k: v for k, v in feeds.items() if k in names}
    t = time.perf_counter()
    sess.run(None, feeds)
    first_run_s = time.perf_counter() - t
    print(json.dumps({"import_s": import_s, "compile_s": compile_s, "first_run_s": first_run_s,
                      "total_s": time.perf_counter() - T0, "kernel_cache": cache.stats()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
