"""Thread-pool A/B: eetjit's GPT-2 small forward (batch 1, seq 128) under thread settings, each in a fresh process.

    python -m benchmarks.ab_threads [--rounds 3] [--batch 1] [--reps 7] [--variants a,b,...]

Why a separate script: the thread settings that matter are read once, when a native library starts its pool
(OpenBLAS at numpy import, libgomp when Numba's OpenMP layer starts), so each variant needs its own process.
Variants run interleaved, round after round, so that a change in the machine's load hits them alike; onnxruntime
runs as a variant too, as the yardstick under the same conditions. Prints a table and writes
benchmarks/out/ab_threads.json. The variants named `proto-*` apply a proposed runtime change in-process
(monkeypatch, no file edited); `proto-serial-kernels` is what eetjit/backends/cpu.py now does on <= 4 cores, so
on such a machine it equals `default` — see benchmarks/NOTES.md §1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    # name: (environment additions, in-process prototype)
    "default": ({}, None),
    # libgomp's own default wait policy (spin, then sleep), stated explicitly: an empty value is ignored by libgomp
    # (it warns); with the 9affd39 runtime it also stopped eetjit's OMP_WAIT_POLICY setdefault (NOTES.md §1)
    "libgomp-default": ({"OMP_WAIT_POLICY": ""}, None),
    "omp-passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "blas-timeout": ({"OPENBLAS_THREAD_TIMEOUT": "4"}, None),
    "omp-passive+blas-timeout": ({"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}, None),
    "numba-workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, None),
    "numba-1-thread": ({"NUMBA_NUM_THREADS": "1"}, None),
    "all-1-thread": ({"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, None),
    "proto-serial-kernels": ({}, "serial_kernels"),
    "proto-workqueue": ({}, "workqueue"),
    "onnxruntime": ({}, "ort"),
    # torch imported before eetjit, as in the benchmark harness or any script that uses transformers too
    "torch-first": ({}, "torch"),
    "torch-first+omp-passive-env": ({"OMP_WAIT_POLICY": "PASSIVE"}, "torch"),
    "torch-first+proto-workqueue": ({}, "torch+workqueue"),
    "torch-first+proto-serial-kernels": ({}, "torch+serial_kernels"),
}
DEFAULT = ("default", "libgomp-default", "omp-passive+blas-timeout", "numba-workqueue", "proto-serial-kernels",
           "onnxruntime")


def child(variant: str, batch: int, reps: int, model: str) -> dict:
    import numpy as np
    _, proto = VARIANTS[variant]
    flags = set((proto or "").split("+"))
    if "torch" in flags:
        import torch  # noqa: F401
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50257, (batch, 128)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "ort" in flags:
        import onnxruntime as ort
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        fn = lambda: sess.run(None, feeds)  # noqa: E731
    else:
        if "workqueue" in flags:             # alternative: a threading layer whose idle workers sleep
            import numba
            numba.config.THREADING_LAYER = "workqueue"
        import eetjit
        if "serial_kernels" in flags:        # the change: Numba kernels on the calling thread only
            import eetjit.backends.cpu as cpu
            cpu.MIN_PARALLEL_WORK = 1 << 62
        sess = eetjit.compile(model, max_batch=batch, max_seq_len=1024, verbose=False)
        fn = lambda: sess.run(None, feeds)  # noqa: E731
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median": statistics.median(ts), "samples": ts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variants", default=",".join(DEFAULT), help="comma list of " + ",".join(VARIANTS))
    args = p.parse_args(argv)
    from benchmarks import common as C
    model = str(C.model_path("gpt2"))
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.reps, model)))
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    base_env = {k: v for k, v in os.environ.items() if k not in C.BLAS_ENV}
    base_env["PYTHONPATH"] = str(C.ROOT) + (os.pathsep + base_env["PYTHONPATH"] if base_env.get("PYTHONPATH") else "")
    per = {n: [] for n in names}
    loads = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            env = dict(base_env, **VARIANTS[n][0])
            loads.append(C.wait_for_quiet())
            out = subprocess.run([sys.executable, "-m", "benchmarks.ab_threads", "--child", n, "--batch",
                                  str(args.batch), "--reps", str(args.reps)], capture_output=True, text=True,
                                 env=env, cwd=C.ROOT)
            if out.returncode != 0:
                C.log(f"[ab] {n}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            per[n].append(res["median"])
            C.log(f"[ab] round {r + 1} {n}: {res['median'] * 1e3:.1f} ms (before: {loads[-1]})")
    ort = statistics.median(per["onnxruntime"]) if per.get("onnxruntime") else None
    rows = []
    for n in names:
        if not per[n]:
            continue
        m = statistics.median(per[n])
        rows.append([n, C.fmt_ms(m), " ".join(C.fmt_ms(x) for x in per[n]),
                     f"{m / ort:.2f}x" if ort else "-", " ".join(f"{k}={v}" for k, v in VARIANTS[n][0].items())])
    print(f"GPT-2 small forward, batch {args.batch}, seq 128; median over rounds of each process's median of "
          f"{args.reps} runs")
    print(C.table(["variant", "median ms", "per round ms", "vs onnxruntime", "env"], rows))
    env = C.environment(None)
    C.write_json("ab_threads", {"batch": args.batch, "reps": args.reps, "rounds": args.rounds, "results": per,
                                "quiet_before_each": loads, "env": env})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
