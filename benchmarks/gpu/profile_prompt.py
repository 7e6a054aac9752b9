"""Where the prompt pass spends its time and memory (GPU): GPT-2 small float16, eetjit's prompt pass (the
generation plan run once over the left-padded batch) timed three ways, against Hugging Face's forward of the same
weights in the same process; then the peak memory of a whole generate (batch 32, prompt 512, 128 new tokens) for
both.

    python benchmarks/gpu/profile_prompt.py --model MODEL_DIR/gpt2-ts17-eager.onnx [--batch 8 --prompt 512]

The three timings: eager (the plan launching op by op from Python, then a synchronize; beside it the host's
enqueue time alone), as one captured CUDA graph (the generator's PromptPass from its third run: device time by
events, and wall), and every kernel op captured alone and replayed (device time per op, summed per op type), so
host launch cost and kernel time are told apart.
Memory: eetjit = the rise of cudaMemGetInfo's used bytes over the process (CuPy pool included: what another
process could not use), and the CuPy pool's peak bytes in use, sampled after every op; HF = torch's
max_memory_allocated / max_memory_reserved around its generate.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def used_bytes() -> int:
    import cupy
    free, total = cupy.cuda.runtime.memGetInfo()
    return total - free


def op_type_totals(rows) -> list[tuple[str, float, int]]:
    """(op type, total ms, count) from CapturedPlan.profile rows, largest first (ops that could not be captured
    alone: NaN, left out of the totals)."""
    totals, counts = defaultdict(float), defaultdict(int)
    for kind, _, ms in rows:
        if ms == ms:
            totals[kind] += ms
            counts[kind] += 1
    return sorted(((k, v, counts[k]) for k, v in totals.items()), key=lambda r: -r[1])


def profile_prompt(sess, B, P, repeats=5):
    """Timings of the prompt pass of B prompts of P tokens (ms): dict with `eager` (the plan launched op by op,
    then synchronized), `enqueue` (the host's part of that: until the last launch returns), `graph` (the same pass
    as one captured CUDA graph: the device time), `ops_device` (sum of each op captured alone) and `ops` rows."""
    import cupy
    gen = sess._generator
    rng = np.random.default_rng(0)
    ids = rng.integers(10, sess.structure.vocab, (B, P)).astype(np.int64)
    pad = np.zeros(B, np.int64)
    positions = np.broadcast_to(np.arange(P, dtype=np.int64), (B, P)).copy()
    pp = gen.prompt_pass(B, P)
    for _ in range(3):                      # trace, eager on the fixed buffers + capture, replay
        pp(ids, positions, pad)
    stream = sess.backend.dev.stream
    stream.synchronize()

    def timed(fn, sync=True):
        out = []
        for _ in range(repeats):
            stream.synchronize()
            t = time.perf_counter()
            fn()
            if sync:
                stream.synchronize()
            out.append((time.perf_counter() - t) * 1e3)
        return statistics.median(out)
    res = dict(eager=timed(lambda: pp.plan.run(pp.feeds)), enqueue=timed(lambda: pp.plan.run(pp.feeds), sync=False))
    if pp.graph is not None:
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(stream)
        for _ in range(repeats):
            pp.run()
        b.record(stream)
        b.synchronize()
        res["graph"] = cupy.cuda.get_elapsed_time(a, b) / repeats
        res["graph_wall"] = timed(pp.run)
    else:
        res["graph"] = res["graph_wall"] = float("nan")
        print(f"prompt pass not captured: {pp.capture_failed}")
    rows = pp.profile(repeats)
    res["ops"] = rows
    res["ops_device"] = sum(ms for _, _, ms in rows if ms == ms)
    return res


def hf_forward_ms(model, B, P, vocab, repeats=5):
    import torch
    ids = torch.randint(10, vocab, (B, P), device="cuda")
    with torch.no_grad():
        for _ in range(2):
            model(input_ids=ids)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(input_ids=ids, use_cache=True)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--mem-batch", type=int, default=32)
    ap.add_argument("--mem-prompt", type=int, default=512)
    ap.add_argument("--mem-new", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cprofile", action="store_true", help="also: the host's time in the prompt pass (cProfile, "
                    "top functions by own time) and stop")
    args = ap.parse_args()
    import cupy
    import eetjit

    base = used_bytes()
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=args.mem_batch,
                          max_seq_len=args.mem_prompt + args.mem_new, verbose=False)
    sess.generate([[1, 2, 3]], max_new_tokens=2)              # builds the generator (caches) and compiles
    after_compile = used_bytes() - base
    if args.cprofile:
        import cProfile
        import pstats
        profile_prompt(sess, args.batch, args.prompt, repeats=1)      # warm
        prof = cProfile.Profile()
        prof.enable()
        profile_prompt(sess, args.batch, args.prompt, repeats=3)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)
        return
    res = profile_prompt(sess, args.batch, args.prompt)
    wall = res["eager"]
    print(f"eetjit prompt pass {args.batch} x {args.prompt} (ms): eager {res['eager']:.2f} (host enqueue "
          f"{res['enqueue']:.2f}), as one graph {res['graph']:.2f} device / {res['graph_wall']:.2f} wall, "
          f"sum of ops alone {res['ops_device']:.2f}")
    for kind, ms, n in op_type_totals(res["ops"]):
        print(f"  {kind:<20} {ms:8.3f} ms  ({n} ops, {ms / n * 1e3:.1f} us each)")
    # memory of one whole generate at the memory size
    pool = cupy.get_default_memory_pool()
    rng = np.random.default_rng(1)
    prompts = rng.integers(10, sess.structure.vocab, (args.mem_batch, args.mem_prompt)).tolist()
    sess.generate(prompts, max_new_tokens=args.mem_new)
    cupy.cuda.Device().synchronize()
    eet_used = used_bytes() - base
    eet_pool_total, eet_pool_used = pool.total_bytes(), pool.used_bytes()
    print(f"eetjit memory: after compile {after_compile / 2**20:.0f} MiB; after generate {args.mem_batch} x "
          f"{args.mem_prompt} + {args.mem_new}: {eet_used / 2**20:.0f} MiB (pool held {eet_pool_total / 2**20:.0f}, "
          f"in use {eet_pool_used / 2**20:.0f})")
    result = dict(prompt_batch=args.batch, prompt_len=args.prompt, eetjit_prompt_wall_ms=wall,
                  eetjit_prompt_graph_ms=res["graph"], eetjit_prompt_graph_wall_ms=res["graph_wall"],
                  eetjit_prompt_enqueue_ms=res["enqueue"], eetjit_prompt_ops_device_ms=res["ops_device"],
                  eetjit_prompt_ops=res["ops"], eetjit_mem_after_compile=after_compile,
                  eetjit_mem_after_generate=eet_used, eetjit_pool_total=eet_pool_total)

    try:
        import torch
        sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
        from bench_decode import _export_module
        exp = _export_module()
        model = exp.build_model("gpt2", size="base", seed=0, attn="sdpa").half().cuda().eval()
        hf = hf_forward_ms(model, args.batch, args.prompt, sess.structure.vocab)
        print(f"HF forward {args.batch} x {args.prompt}: {hf:.2f} ms  (eetjit / HF = {wall / hf:.2f})")
        torch.cuda.reset_peak_memory_stats()
        ids = torch.tensor(prompts, device="cuda")
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.mem_new, do_sample=False,
                           pad_token_id=0)
        hf_alloc, hf_res = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        print(f"HF memory generate: max allocated {hf_alloc / 2**20:.0f} MiB, max reserved {hf_res / 2**20:.0f} MiB")
        result.update(hf_forward_ms=hf, hf_max_allocated=hf_alloc, hf_max_reserved=hf_res)
    except Exception as e:       # report eetjit's side even when the peer fails
        print(f"HF side failed: {type(e).__name__}: {e}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_prompt.json").write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
