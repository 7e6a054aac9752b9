"""Device time per GPU kernel (GPU): CUPTI, through torch.profiler, sees every kernel of the process, whoever
launched it (Numba, CuPy, cuBLAS/cuBLASLt), so the time of each launch inside a fused op is told apart.

    python benchmarks/gpu/kernel_profile.py --model MODEL_DIR/gpt2-ts17-eager.onnx --what prompt [--batch 8 --len 512]
    python benchmarks/gpu/kernel_profile.py --model MODEL_DIR/bert-ts17-eager.onnx --what bert [--batch 32]

`prompt`: eetjit's prompt pass of B prompts of P tokens (GPT-2, float16), then Hugging Face's forward of the same
weights; `bert`: Session.run of B sequences of mixed lengths 32..P (seed 0, as bench_more.py's bert section), then
Hugging Face's BertModel (sdpa). Each is run warm `--runs` times inside the profiler; the table lists kernels by
total device time per run (eager launches: the device durations are exact even when the host is the bottleneck).
"""
from __future__ import annotations

import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--what", choices=("prompt", "bert"), default="prompt")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import torch
    import eetjit
    from bench_decode import _export_module
    exp = _export_module()
    rng = np.random.default_rng(0)
    if args.what == "prompt":
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
