"""Device time per GPU kernel (GPU): CUPTI, through torch.profiler, sees every kernel of the process, whoever
launched it (Numba, CuPy, cuBLAS/cuBLASLt), so the time of each launch inside a fused op is told apart.

    python benchmarks/gpu/kernel_profile.py --model MODEL_DIR/gpt2-ts17-eager.onnx --what prompt [--batch 8 --len 512]
    python benchmarks/gpu/kernel_profile.py --model MODEL_DIR/bert-ts17-eager.onnx --what bert [--batch 32]
    python benchmarks/gpu/kernel_profile.py --model MODEL_DIR/gpt2-ts17-eager.onnx --what decode --batch 1 --len 64

`prompt`: eetjit's prompt pass of B prompts of P tokens (GPT-2, float16), then Hugging Face's forward of the same
weights; `bert`: Session.run of B sequences of mixed lengths 32..P (seed 0, as bench_more.py's bert section), then
Hugging Face's BertModel (sdpa). Each is run warm `--runs` times inside the profiler; the table lists kernels by
total device time per run (eager launches: the device durations are exact even when the host is the bottleneck).
`decode`: greedy generate of B prompts of P tokens (GPT-2, float16), 8 and then 8 + 64 new tokens, each inside the
profiler: the difference is 64 decode steps as the session runs them (replayed CUDA graphs), told apart by kernel,
with a step's wall time, its kernels' summed device time, the time some kernel was running (kernels overlap under
programmatic dependent launch) and the rest, when none was. Each kernel is credited with what its end adds past
every kernel before it (a gap before it included, so the credits sum to the wall time), over the long run's last
kernels, as many as 64 steps launch (not cut at step boundaries).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def kernel_table(fn, runs: int, title: str, top: int = 14) -> float:
    """Profile `runs` calls of fn (warm); print the top kernels; return the device ms per run."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            name = ev.name if len(ev.name) <= 70 else ev.name[:67] + "..."
            t, n = rows.get(name, (0.0, 0))
            rows[name] = (t + ev.device_time_total if hasattr(ev, "device_time_total") else t + ev.cuda_time_total,
                          n + 1)
    total = sum(t for t, _ in rows.values()) / runs / 1e3
    print(f"{title}: device {total:.3f} ms per run (sum of kernel times)")
    for name, (t, n) in sorted(rows.items(), key=lambda r: -r[1][0])[:top]:
        print(f"  {t / runs / 1e3:8.3f} ms  {n // runs:4d}x  {name}")
    return total


def _kernels(fn) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every kernel that ran during fn(), by CUPTI, in start order."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = [(_short(ev.name), ev.time_range.start, ev.time_range.end) for ev in prof.events()
           if ev.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in ev.name.lower()
           and "memset" not in ev.name.lower()]
    return sorted(out, key=lambda e: e[1])


def _short(name: str) -> str:
    """A Numba kernel's op and specialization hash out of its mangled name (eetjit_cuda_<op>_<hash>), else the name."""
    m = re.search(r"eetjit_cuda_([a-z0-9_]+?)_([0-9a-f]{8})", name)
    name = f"{m.group(1)} {m.group(2)}" if m else name
    return name if len(name) <= 70 else name[:67] + "..."


def _busy(evs) -> float:
    """The time (us) some kernel of evs was running: the union of their intervals."""
    busy, end = 0.0, None
    for _, a, b in evs:
        if end is None or a > end:
            busy, end = busy + (b - a), b
        elif b > end:
            busy, end = busy + (b - end), b
    return busy


def decode_table(args, rng, top: int = 16) -> None:
    """Per decode step (the difference of an 8 + 64 and an 8 new-token generate): kernels by device time, and the
    step's wall, summed kernel, busy and idle time."""
    import eetjit
    B, P, steps = args.batch or 1, args.len, 64
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=B,
                          max_seq_len=args.max_seq_len or P + 264, verbose=False)
    prompts = rng.integers(10, sess.structure.vocab, (B, P)).tolist()
    for n in (8, 8 + steps):                       # capture and warm both
        sess.generate(prompts, max_new_tokens=n)
    short = _kernels(lambda: sess.generate(prompts, max_new_tokens=8))
    long = _kernels(lambda: sess.generate(prompts, max_new_tokens=8 + steps))
    rows: dict[str, list] = {}
    for sign, evs in ((-1, short), (1, long)):
        for name, a, b in evs:
            r = rows.setdefault(name, [0.0, 0])
            r[0] += sign * (b - a)
            r[1] += sign
    # the last `steps` steps' kernels of the long run: the decode steps past the short run's
    per_step = sum(n for _, n in rows.values()) / steps
    tail = long[-int(round(per_step * steps)):] if per_step > 0 else []
    wall = (tail[-1][2] - tail[0][1]) / steps if tail else 0.0
    summed = sum(b - a for _, a, b in tail) / steps
    busy = _busy(tail) / steps
    # what each kernel adds to the step: how far its end lies past every earlier kernel's (under programmatic
    # dependent launch a kernel starts, and its duration counts, while it waits for the one before it)
    adds: dict[str, float] = {}
    last = None
    for name, a, b in tail:
        adds[name] = adds.get(name, 0.0) + (b - a if last is None else max(0.0, b - last))
        last = b if last is None else max(last, b)
    print(f"eetjit decode B{B} x {P}, per step ({steps} steps): wall {wall:.1f} us, {per_step:.1f} kernels, "
          f"kernel time summed {summed:.1f} us, some kernel running {busy:.1f} us, none running {wall - busy:.1f} us")
    print("  adds us  duration us  per step  kernel")
    for name, (t, n) in sorted(rows.items(), key=lambda r: -adds.get(r[0], 0.0))[:top]:
        print(f"  {adds.get(name, 0.0) / steps:7.2f}  {t / steps:11.2f}  {n / steps:7.1f}x  {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--what", choices=("prompt", "bert", "decode"), default="prompt")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="decode: the cache capacity (default len + 264, bench_more.py's one-row sections' len + "
                         "128 new + 8 + 128): it sets the attention's splits")
    args = ap.parse_args()
    import torch
    import eetjit
    from bench_decode import _export_module
    exp = _export_module()
    rng = np.random.default_rng(0)
    if args.what == "decode":
        decode_table(args, rng)
    elif args.what == "prompt":
        B, P = args.batch or 8, args.len
        sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=B, max_seq_len=P + 8,
                              verbose=False)
        sess.generate([[1, 2, 3]], max_new_tokens=2)
        ids = rng.integers(10, sess.structure.vocab, (B, P)).astype(np.int64)
        pad = np.zeros(B, np.int64)
        positions = np.broadcast_to(np.arange(P, dtype=np.int64), (B, P)).copy()
        pp = sess._generator.prompt_pass(B, P)
        pp(ids, positions, pad)
        kernel_table(lambda: pp.plan.run(pp.feeds), args.runs, f"eetjit prompt pass {B} x {P} (eager)")
        model = exp.build_model("gpt2", size="base", seed=0, attn="sdpa").half().cuda().eval()
        t_ids = torch.from_numpy(ids).cuda()
        with torch.no_grad():
            kernel_table(lambda: model(input_ids=t_ids), args.runs, f"HF forward {B} x {P}")
    else:
        B, hi = args.batch or 32, args.len
        lens = rng.integers(32, hi + 1, B)
        S = int(lens.max())
        model = exp.build_model("bert", size="base", seed=0, attn="sdpa")
        vocab = model.config.vocab_size
        mask = (np.arange(S)[None, :] < lens[:, None]).astype(np.int64)
        ids = rng.integers(1, vocab, (B, S)).astype(np.int64) * mask
        tt = rng.integers(0, 2, (B, S)).astype(np.int64) * mask
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=B, max_seq_len=S,
                              verbose=False)
        sess.run(None, feeds)
        kernel_table(lambda: sess.run(None, feeds), args.runs, f"eetjit BERT Session.run B{B} lengths 32..{hi}")
        model = model.half().cuda().eval()
        t = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
        with torch.no_grad():
            kernel_table(lambda: model(**t), args.runs, f"HF BertModel B{B}")


if __name__ == "__main__":
    main()
