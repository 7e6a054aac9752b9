"""GPU decode benchmark: GPT-2 small, float16, greedy decode ms per step at (batch 1, context 64) and (batch 32,
context 512): eetjit (decode step replayed as one CUDA graph) against Hugging Face `generate` with its default
(dynamic) cache and with cache_implementation="static" (transformers compiles the step), and the bandwidth floor
(every weight and the KV cache read once per step at the copy bandwidth measured here).

Per-step time = (time of a generate with N new tokens - time with 1 new token) / (N - 1): the prompt pass cancels
out, the host's per-step work stays in (eetjit reads each step's tokens back, as `stream=True` would). eetjit's
graph replay alone (device time per step, CUDA events) is reported beside it. Run on the GPU machine from the
project root, after the wheels of GPU.md are installed (benchmarks/gpu/run.sh does both):

    python benchmarks/gpu/bench_decode.py --model MODEL_DIR/gpt2-ts17-eager.onnx --out OUT_DIR
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _export_module():
    spec = importlib.util.spec_from_file_location("graphs_export", ROOT / "graphs" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), CuPy, median of 10."""
    import cupy
    n = 1 << 30
    a = cupy.ones(n // 4, cupy.float32)
    b = cupy.empty_like(a)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(12):
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return 2 * n / statistics.median(times[2:])


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def per_step(run, new, repeats, label=""):
    """(ms per decode step, tokens of the long run)."""
    out = {}

    def long():
        out["tokens"] = run(new)
    longs = [timed(long, 1) for _ in range(repeats)]
    ones = [timed(lambda: run(1), 1) for _ in range(repeats)]
    print(f"    {label} generate({new}) s: {', '.join(f'{t:.4f}' for t in longs)}; generate(1) s: "
          f"{', '.join(f'{t:.4f}' for t in ones)}", flush=True)
    return 1e3 * (statistics.median(longs) - statistics.median(ones)) / (new - 1), out["tokens"]


HEADROOM = 128


def _restorer(step, dev):
    """A function that puts back the step's inputs as they are now (the replays advance them on the device)."""
    saved = [dev.to_host(a).copy() for a in (step.ids, step.positions, step.step)]

    def restore():
        for a, h in zip((step.ids, step.positions, step.step), saved):
            dev.set(a, h)
        dev.synchronize()
    return restore


def host_loop_ms(step, backend, n=HEADROOM):
    """ms per step of the generate loop's core (replay, tokens to the host) and of bare replays (host-timed)."""
    dev = backend.dev
    restore = _restorer(step, dev)
    t = time.perf_counter()
    for _ in range(n):
        step.run()
        backend.to_host(step.tokens)
    loop = (time.perf_counter() - t) / n * 1e3
    restore()
    t = time.perf_counter()
    for _ in range(n):
        step.run()
    dev.synchronize()
    bare = (time.perf_counter() - t) / n * 1e3
    restore()
    t = time.perf_counter()
    for _ in range(n):
        step.run()
        dev.synchronize()
    synced = (time.perf_counter() - t) / n * 1e3
    t = time.perf_counter()
    for _ in range(n):
        backend.to_host(step.tokens)
    d2h = (time.perf_counter() - t) / n * 1e3
    print(f"    host loop: replay+tokens {loop:.3f}, replay+sync {synced:.3f}, tokens alone {d2h:.3f}, "
          f"bare replays {bare:.3f} ms/step", flush=True)
    restore()
    return loop, bare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="GPT-2 small ONNX export (graphs/export.py --size base)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--configs", default="1x64,32x512", help="BATCHxCONTEXT,...")
    ap.add_argument("--new", type=int, default=128, help="new tokens per generate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", default="hf,hf-static", help="comma list of hf, hf-static (or none)")
    ap.add_argument("--profile", action="store_true", help="per-op device times of eetjit's decode step")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    peers = [p for p in args.peers.split(",") if p and p != "none"]

    import torch
    import eetjit
    card = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"card: {card}; device-to-device copy {bw / 1e12:.2f} TB/s", flush=True)

    t = time.perf_counter()
    # + HEADROOM: room for the replay timings below, which advance the positions past the generated tokens (each
    # puts them back when it ends; HEADROOM bounds the replays of one)
    max_seq = max(ctx for _, ctx in configs) + args.new + 8 + HEADROOM
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=max(b for b, _ in configs),
                          max_seq_len=max_seq, verbose=False)
    print(f"eetjit compile (load, fuse, upload): {time.perf_counter() - t:.1f} s; fusion {sess.fusion_report.counts}; "
          f"programmatic dependent launch: {'on' if sess.backend.dev.pdl else 'off'}", flush=True)
    s = sess.structure
    # bytes a step must read: every GEMM weight (the LM head included) and norm vector, once (the embedding
    # tables are read a row per token, not counted)
    params = sum(int(np.prod(v.const.shape)) for n in sess.graph.nodes if n.domain == "eet"
                 and n.op_type not in ("Embedding",) for v in n.inputs if v is not None and v.is_const)

    hf = None
    if peers:
        hf = _export_module().build_model("gpt2", size="base", seed=0, attn="sdpa").half().cuda().eval()

    results = []
    for B, ctx in configs:
        rng = np.random.default_rng(B * 1000 + ctx)
        prompts = rng.integers(100, s.vocab - 100, (B, ctx)).tolist()
        kv_bytes = 2 * s.num_layers * B * s.hidden * (ctx + args.new // 2) * 2     # K and V, fp16, mean length
        floor_ms = 1e3 * (2 * params + kv_bytes) / bw
        entry = {"batch": B, "context": ctx, "new_tokens": args.new, "card": card, "floor_ms": floor_ms}

        def run_eet(n):
            return sess.generate(prompts, max_new_tokens=n)
        t = time.perf_counter()
        run_eet(args.new)                                       # warm-up: compile, plan, capture; the prompt
        run_eet(args.new)                                       # pass's memory plan (2nd run of a shape)
        print(f"[{B}x{ctx}] eetjit warm-up {time.perf_counter() - t:.1f} s", flush=True)
        ms, eet_tokens = per_step(run_eet, args.new, args.repeats, "eetjit")
        step = sess._generator.steps[B]
        entry["eetjit_ms"] = ms
        entry["eetjit_graph"] = step.graph is not None
        entry["eetjit_replay_ms"] = replay_ms(step, sess.backend.dev)
        loop, bare = host_loop_ms(step, sess.backend)
        entry["eetjit_loop_ms"], entry["eetjit_bare_replay_ms"] = loop, bare
        print(f"[{B}x{ctx}] eetjit {ms:.3f} ms/step (graph replay {entry['eetjit_replay_ms']:.3f} ms, "
              f"captured={entry['eetjit_graph']}; host loop replay+tokens {loop:.3f} ms, bare replays {bare:.3f} ms)",
              flush=True)
        if args.profile and step.graph is not None:
            prof = step.profile()
            entry["profile"] = prof
            total = sum(r[2] for r in prof)
            by_kind: dict = {}
            for kind, _, t in prof:
                by_kind[kind] = by_kind.get(kind, 0.0) + t
            print(f"    profile: {len(prof)} ops, sum {total:.3f} ms; by op: " + ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])), flush=True)
            for kind, name, t in sorted(prof, key=lambda r: -r[2])[:4]:
                print(f"      {t * 1e3:8.1f} us  {kind:16s} {name}", flush=True)

        for peer in peers:
            kw = {"cache_implementation": "static"} if peer == "hf-static" else {}
            ids = torch.tensor(prompts, device="cuda")
            mask = torch.ones_like(ids)

            def run_hf(n, kw=kw):
                with torch.no_grad():
                    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=50256, **kw)
                torch.cuda.synchronize()
                return out[:, ctx:].tolist()
            try:
                t = time.perf_counter()
                run_hf(args.new)
                run_hf(args.new)
                print(f"[{B}x{ctx}] {peer} warm-up {time.perf_counter() - t:.1f} s", flush=True)
                ms, hf_tokens = per_step(run_hf, args.new, args.repeats, peer)
            except Exception as e:  # a peer that fails is reported, not fatal
                print(f"[{B}x{ctx}] {peer} failed: {type(e).__name__}: {e}", flush=True)
                entry[f"{peer}_ms"] = None
                continue
            entry[f"{peer}_ms"] = ms
            if peer == "hf":    # both float16, different summation orders: a near-tie can flip a token
                new_eet = [row[len(prompts[0]):] for row in eet_tokens]
                for k in (1, 16):
                    entry[f"tokens_agree_first{k}"] = float(np.mean([a[:k] == b[:k]
                                                                     for a, b in zip(new_eet, hf_tokens)]))
            print(f"[{B}x{ctx}] {peer} {ms:.3f} ms/step", flush=True)
        results.append(entry)

    (args.out / "bench_decode.json").write_text(json.dumps(results, indent=2))
    print()
    print(f"GPT-2 small fp16 greedy decode, ms per step ({args.new} new tokens), card: {card}")
    head = ["batch x ctx", "eetjit", "(graph replay)", "HF default", "HF static", "floor", "eetjit/floor",
            "tokens=HF (1st, first 16)"]
    print(" | ".join(head))
    for e in results:
        f = lambda v: "n/a" if v is None else f"{v:.3f}"   # noqa: E731
        print(" | ".join([f"{e['batch']} x {e['context']}", f(e["eetjit_ms"]), f(e["eetjit_replay_ms"]),
                          f(e.get("hf_ms")), f(e.get("hf-static_ms")), f(e["floor_ms"]),
                          f"{e['eetjit_ms'] / e['floor_ms']:.1f}x",
                          "n/a" if "tokens_agree_first16" not in e else
                          f"{e['tokens_agree_first1']:.2f}, {e['tokens_agree_first16']:.2f}"]))
    return 0


def replay_ms(step, dev, n=50) -> float:
    """Device time of one decode step replay (CUDA events around n replays; the inputs advance on the device and
    are put back after)."""
    import cupy
    if step.graph is None:
        return float("nan")
    restore = _restorer(step, dev)
    n = min(n, HEADROOM)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(dev.stream)
    for _ in range(n):
        dev.replay(step.graph)
    end.record(dev.stream)
    end.synchronize()
    restore()
    return cupy.cuda.get_elapsed_time(start, end) / n


if __name__ == "__main__":
    sys.exit(main())
