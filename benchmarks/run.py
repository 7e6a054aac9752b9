"""The one entry point: `python -m benchmarks.run SUITE [--device cpu|cuda] [--quick]` (from the repository root).

    forward    GPT-2 small + BERT-base forward latency, batch 1 and 4, seq 128: eetjit vs onnxruntime vs PyTorch;
               cold / warm compile time of GPT-2 small (fresh processes)
    generate   GPT-2 small greedy generation, batch 1 and 8, prompt 32, 32 new tokens: eetjit vs HF generate
    all        both

Prints a table (medians, ratios eetjit / peer), writes benchmarks/out/SUITE.json and benchmarks/out/SUITE.png
(copied to benchmarks/charts/ when under 200 KB). `eetjit bench SUITE ...` runs the same code.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SUITES = ("forward", "generate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES + ("all",))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: batch 1 only, 3 reps, 1 round, no compile-time subprocesses")
    p.add_argument("--reps", type=int, default=None, help="timed runs per peer per round (default 10 forward, 5 "
                   "generate; 3 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of reps, peer order reversed each round (default 2; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per peer before the first round")
    p.add_argument("--batches", default=None, help="comma list (default forward 1,4; generate 1,8)")
    p.add_argument("--families", default="gpt2,bert", help="forward: comma list of gpt2,bert")
    p.add_argument("--hf-attn", default="sdpa,eager", help="generate: HF attention implementations to run")
    p.add_argument("--dtypes", default="float32,float16,bfloat16",
                   help="generate: eetjit session dtypes to run (on the CPU float16 stores the GEMM weights in 16 "
                        "bits; bfloat16 also rounds the GEMM inputs; activations stay float32)")
    p.add_argument("--hf-bf16", default="sdpa", help="generate: HF attention implementations to run also with "
                   "bfloat16 weights and activations (PyTorch's fastest CPU dtype here; empty: none)")
    p.add_argument("--no-compile", action="store_true", help="forward: skip the cold/warm compile subprocesses")
    p.add_argument("--no-profile", action="store_true", help="forward: skip eetjit's per-op breakdown")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--machine", default=None, help="the machine's label in the JSON and charts")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--quiet-threshold", type=float, default=0.15,
                   help="before each timed block wait until other processes use less than this share of the CPUs")
    p.add_argument("--max-wait", type=float, default=90.0, help="... but no longer than this many seconds")
    return p


def _suite_args(args, suite: str) -> argparse.Namespace:
    a = argparse.Namespace(**vars(args))
    default_batches = {"forward": "1,4", "generate": "1,8"}[suite]
    a.batches = [int(x) for x in (args.batches or ("1" if args.quick else default_batches)).split(",")]
    a.reps = args.reps or (3 if args.quick else {"forward": 10, "generate": 5}[suite])
    a.rounds = args.rounds or (1 if args.quick else 2)
    if args.quick:
        a.warmup = min(args.warmup, 1)
        a.no_compile = True
    a.families = [f.strip() for f in args.families.split(",") if f.strip()]
    a.hf_attn = [x.strip() for x in args.hf_attn.split(",") if x.strip()]
    a.dtypes = [x.strip() for x in args.dtypes.split(",") if x.strip()]
    a.hf_bf16 = [x.strip() for x in args.hf_bf16.split(",") if x.strip()]
    return a


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import common as C
    # The peers' native libraries load first, as they would in a process of their own (and as in a user's
    # script that imports transformers): torch's libgomp is then the OpenMP runtime Numba's pool runs on.
    for peer in ("torch", "onnxruntime"):
        try:
            __import__(peer)
        except ImportError:
            pass
    C.QUIET.update(threshold=args.quiet_threshold, max_wait_s=args.max_wait)
    warn = C.blas_warning()
    if warn:
        C.log(f"[bench] warning: {warn}")
    suites = SUITES if args.suite == "all" else (args.suite,)
    for suite in suites:
        a = _suite_args(args, suite)
        if suite == "forward":
            from benchmarks import suite_forward as mod
        else:
            from benchmarks import suite_generate as mod
        env = C.environment(args.machine)
        data = mod.run(a)
        data["env"] = env
        data["env"]["thread_pools"] = C.thread_pools()         # after the run: every pool is loaded by now
        data["env"]["numba"] = C.numba_threading()
        data["env"]["blas_warning"] = warn
        data["settings"] = {"reps": a.reps, "rounds": a.rounds, "warmup": a.warmup, "batches": a.batches,
                            "quick": a.quick, "device": a.device, "seed": a.seed}
        text = mod.report(data)
        print(text)
        pools = ", ".join(f"{p.get('internal_api')}:{p.get('prefix')}({p.get('architecture') or ''}"
                          f"{'' if p.get('architecture') is None else ', '}{p.get('num_threads')} threads)"
                          for p in data["env"]["thread_pools"] if "note" not in p)
        print(f"machine: {data['env']['machine']}; {data['env']['date']}; thread pools: {pools}; numba layer "
              f"{data['env']['numba']['threading_layer']} x{data['env']['numba']['num_threads']}")
        path = C.write_json(suite, data)
        print(f"wrote {os.path.relpath(path)}", end="")
        if not args.no_chart:
            try:
                pngs = C.save_chart(mod.chart(data), suite)
                print(", " + ", ".join(os.path.relpath(p) for p in pngs), end="")
            except ImportError as e:
                print(f" (no chart: {e})", end="")
        print("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
