"""Command line: `eetjit inspect | run | generate | bench` (also `python -m eetjit`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def cmd_inspect(args) -> int:
    import eetjit
    graph = eetjit.load(args.model)
    before = graph.op_histogram()
    report = None
    if not args.no_fuse:
        from eetjit.rewrite import fuse
        report = fuse(graph)
    info = {
        "model": str(args.model),
        "opsets": graph.opsets,
        "inputs": [{"name": v.name, "dtype": None if v.dtype is None else v.dtype.name, "shape": list(v.shape or [])}
                   for v in graph.inputs],
        "outputs": [{"name": v.name, "dtype": None if v.dtype is None else v.dtype.name,
                     "shape": list(v.shape or [])} for v in graph.outputs],
        "parameters": int(sum(v.const.size for v in graph.initializers)),
        "ops_before_fusion": before,
        "ops": graph.op_histogram(),
        "fusion": None if report is None else report.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"model   {info['model']}")
    print(f"opsets  {info['opsets']}   parameters {info['parameters']:,}")
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            print(f"{kind[:-1]:7} {v['name']}: {v['dtype']}{_fmt_shape(v['shape'])}")
    print("ops (after cleanup" + (", before fusion)" if report is not None else ")"))
    for op, n in before.items():
        print(f"  {n:5d}  {op}")
    if report is not None:
        print(report.summary())
    return 0


def _parse_feed(spec: str):
    if "=" not in spec:
        raise SystemExit(f"--input expects name=file.npy, got {spec!r}")
    name, path = spec.split("=", 1)
    try:
        return name, np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--input {name}: cannot read {path!r} as a .npy file ({e})")


def cmd_run(args) -> int:
    import eetjit
    sess = eetjit.compile(args.model, device=args.device, dtype=args.dtype, verbose=False)
    feeds = dict(_parse_feed(s) for s in args.input or [])
    outs = sess.run(None, feeds)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for v, arr in zip(sess.get_outputs(), outs):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in v.name)
        np.save(out_dir / f"{safe}.npy", arr)
        print(f"{v.name}: {arr.dtype.name}{list(arr.shape)} -> {out_dir / (safe + '.npy')}")
    return 0


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"--prompt-ids expects integers separated by spaces, got {text!r}")


def cmd_generate(args) -> int:
    import time

    import eetjit
    prompts = [_parse_ids(p) for p in args.prompt_ids]
    longest = max((len(p) for p in prompts), default=0)
    max_seq_len = args.max_seq_len or max(longest + max(args.max_new_tokens, 0), 2)
    t0 = time.perf_counter()
    sess = eetjit.compile(args.model, device=args.device, dtype=args.dtype, max_batch=max(len(prompts), 1),
                          max_seq_len=max_seq_len, verbose=True)
    t1 = time.perf_counter()
    seqs = [list(p) for p in prompts]
    steps = 0
    for step in sess.generate(prompts, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                              eos_token_id=args.eos_token_id, stream=True):
        steps += 1
        for b, t in enumerate(step):
            if t is not None:
                seqs[b].append(t)
    t2 = time.perf_counter()
    for b, seq in enumerate(seqs):
        new = seq[len(prompts[b]):]
        print(f"[{b}] prompt {' '.join(map(str, prompts[b]))} -> {' '.join(map(str, new))}")
    print(f"session ready in {t1 - t0:.2f} s; {steps} steps in {t2 - t1:.3f} s on {args.device} "
          "(first use compiles the generation kernels, then they load from the disk cache)", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    """Runs benchmarks.run: the harness lives in the source tree (benchmarks/), not in the installed package."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        print("eetjit: error: `eetjit bench` needs the source tree (a checkout with benchmarks/): install it with "
              "`pip install -e .`, or run `python -m benchmarks.run SUITE` in the repository root", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run import main as bench_main
    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eetjit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    from eetjit.resources import default_model

    q = sub.add_parser("inspect", help="inputs/outputs, op histogram and fusion report of a model")
    q.add_argument("model", nargs="?", default=None)
    q.add_argument("--json", action="store_true")
    q.add_argument("--no-fuse", action="store_true", help="skip the fusion pass")
    q.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run a model on .npy inputs and save its outputs")
    r.add_argument("model", nargs="?", default=None)
    r.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    r.add_argument("--output-dir", default="eetjit-out")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    r.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="generate tokens from prompt ids (EET pre-padding, KV cache)")
    gen.add_argument("model", nargs="?", default=None, help="ONNX decoder (default: the shipped tiny GPT-2)")
    gen.add_argument("--prompt-ids", action="append", required=True, metavar='"1 2 3"',
                     help="token ids of one prompt; repeat for a batch")
    gen.add_argument("--max-new-tokens", type=int, default=16)
    gen.add_argument("--do-sample", action="store_true")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--eos-token-id", type=int, default=None)
    gen.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    gen.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    gen.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: prompt + new tokens)")
    gen.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmark suites forward | generate | all (source tree only)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="SUITE [options] (see `eetjit bench SUITE --help`)")
    b.set_defaults(func=cmd_bench)
    p.set_defaults(default_model=default_model)
    return p


def main(argv=None) -> int:
    from eetjit.errors import EetjitError
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "x") is None:
        args.model = str(args.default_model())
    try:
        return args.func(args)
    except EetjitError as e:
        print(f"eetjit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
