"""More GPU measurements, eetjit against Hugging Face in the same call, float16 (see NOTES.md for results):

1. decode ms/step at batch 1, context 64, 64 new tokens (greedy) for GPT-2 medium (1024 x 24 layers x 16 heads) and
   a GPT-2 XL-size model (1600 x 48 x 25), random weights (graphs/export.py init_weights), exported here with
   TorchScript (ts17); bandwidth floor = (fp16 weight bytes + KV bytes read per step) / measured copy bandwidth;
2. peak GPU memory, GPT-2 small, batch 32, context 512 + 128 new tokens (eetjit: cudaMemGetInfo delta and CuPy pool;
   HF: torch.cuda.max_memory_allocated);
3. prompt pass, GPT-2 small, batch 8 x 512 (eetjit generate(1) = prompt pass + first token; HF generate(1) and a
   plain HF forward);
4. cold and warm compile of GPT-2 small (a subprocess with a fresh EETJIT_CACHE_DIR, then again on the same dir).

Each section runs in its own subprocess with a time limit taken from --budget (seconds for the whole script), in
the order medium, memory, prompt, compile, xl; a section that runs out of time or fails is reported, the others
still run. The table is printed last; JSON goes to OUT/bench_more.json. Run from the project root on the GPU
machine with the wheels of shared/GPU.md installed (run.sh does it: `SKIP_TESTS=1 BENCH=more bash
benchmarks/gpu/run.sh`), or:

    python benchmarks/gpu/bench_more.py --model MODEL_DIR/gpt2-ts17-eager.onnx --out OUT_DIR --budget 450
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

SECTIONS = ("medium", "memory", "prompt", "compile", "xl")
# seconds kept back for the sections after this one (so an overrunning early section cannot starve them)
RESERVE = {"medium": 0, "memory": 45, "prompt": 40, "compile": 60, "xl": 0}
GPT2_SIZES = {"medium": (1024, 24, 16), "xl": (1600, 48, 25)}
SECTION_DIR = Path(tempfile.gettempdir()) / "eetjit-more"


def _bd():
    import bench_decode
    return bench_decode


def _card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__})"


def _log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- sections


def sec_decode(args, size: str) -> dict:
    """GPT-2 medium / XL: build, export (ts17), eetjit decode vs HF generate, floor."""
    import torch
    import transformers
    import eetjit
    bd = _bd()
    ex = bd._export_module()
    hidden, layers, heads = GPT2_SIZES[size]
    B, ctx, new = 1, args.ctx, args.new
    res = {"model": f"gpt2-{size}", "hidden": hidden, "layers": layers, "heads": heads, "batch": B, "context": ctx,
           "new_tokens": new}
    bw = bd.copy_bandwidth()
    res["copy_tb_s"] = bw / 1e12
    t = time.perf_counter()
    config = transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads,
                                     bos_token_id=50256, eos_token_id=50256)
    config._attn_implementation = "eager"
    try:        # skip HF's own init (init_weights overwrites every parameter): minutes less for the XL size
        from transformers.modeling_utils import no_init_weights
    except ImportError:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:
            from contextlib import nullcontext as no_init_weights
    with torch.random.fork_rng(devices=[]), no_init_weights():
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
    ex.init_weights(model, 11, hidden)
    model.to(torch.float32).eval()
    res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    res["build_s"] = time.perf_counter() - t
    _log(f"[{size}] built {res['params_M']:.0f} M params in {res['build_s']:.1f} s")
    out_dir = Path(args.model_dir) / f"gpt2-{size}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpt2-ts17-eager.onnx"
    t = time.perf_counter()
    ex.export_onnx(ex.wrap("gpt2", model), "gpt2", "ts17", path, ex.make_inputs("gpt2", 50257, seed=0))
    res["export_s"] = time.perf_counter() - t
    res["onnx_GB"] = sum(f.stat().st_size for f in out_dir.iterdir()) / 1e9
    _log(f"[{size}] exported {res['onnx_GB']:.2f} GB in {res['export_s']:.1f} s")

    t = time.perf_counter()
    sess = eetjit.compile(str(path), device="cuda", dtype="float16", max_batch=B, max_seq_len=ctx + new + 8,
                          verbose=False)
    res["eetjit_compile_s"] = time.perf_counter() - t
    _log(f"[{size}] eetjit compile {res['eetjit_compile_s']:.1f} s")
    s = sess.structure
    params = sum(int(np.prod(v.const.shape)) for n in sess.graph.nodes if n.domain == "eet"
                 and n.op_type not in ("Embedding",) for v in n.inputs if v is not None and v.is_const)
    kv_bytes = 2 * s.num_layers * B * s.hidden * (ctx + new // 2) * 2
    res["weight_GB"] = 2 * params / 1e9
    res["kv_MB"] = kv_bytes / 1e6
    res["floor_ms"] = 1e3 * (2 * params + kv_bytes) / bw
    rng = np.random.default_rng(7)
    prompts = rng.integers(100, s.vocab - 100, (B, ctx)).tolist()

    def run_eet(n):
        return sess.generate(prompts, max_new_tokens=n)
    t = time.perf_counter()
    run_eet(new)
    run_eet(new)
    _log(f"[{size}] eetjit warm-up {time.perf_counter() - t:.1f} s")
    ms, eet_tokens = bd.per_step(run_eet, new, args.repeats, "eetjit")
    res["eetjit_ms"] = ms
    res["eetjit_ratio_floor"] = ms / res["floor_ms"]
    try:
        step = sess._generator.steps[B]
        res["eetjit_replay_ms"] = bd.replay_ms(step, sess.backend.dev)
    except Exception as e:  # noqa: BLE001
        _log(f"[{size}] replay timing failed: {type(e).__name__}: {e}")
    _log(f"[{size}] eetjit {ms:.3f} ms/step, floor {res['floor_ms']:.3f} ms ({res['eetjit_ratio_floor']:.2f}x), "
         f"replay {res.get('eetjit_replay_ms', float('nan')):.3f} ms")
    _flush_partial(args, res)

    try:
        model.set_attn_implementation("sdpa")
        res["hf_attn"] = "sdpa"
    except Exception as e:  # noqa: BLE001
        res["hf_attn"] = f"eager ({type(e).__name__})"
    hf = model.half().cuda().eval()
    ids = torch.tensor(prompts, device="cuda")
    mask = torch.ones_like(ids)

    def run_hf(n):
        with torch.no_grad():
            o = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=50256)
        torch.cuda.synchronize()
        return o[:, ctx:].tolist()
    t = time.perf_counter()
    run_hf(new)
    run_hf(new)
    _log(f"[{size}] HF warm-up {time.perf_counter() - t:.1f} s")
    ms, hf_tokens = bd.per_step(run_hf, new, args.repeats, "hf")
    res["hf_ms"] = ms
    new_eet = [row[ctx:] for row in eet_tokens]
    for k in (1, 16):
        res[f"tokens_agree_first{k}"] = float(np.mean([a[:k] == b[:k] for a, b in zip(new_eet, hf_tokens)]))
    _log(f"[{size}] HF {ms:.3f} ms/step; eetjit speed-up {ms / res['eetjit_ms']:.1f}x")
    return res


def sec_memory(args) -> dict:
    """GPT-2 small, batch 32, ctx 512 + 128 new: peak device memory, eetjit then HF (separate allocators)."""
    import cupy
    import torch
    import eetjit
    bd = _bd()
    B, ctx, new = 32, 512, 128
    res = {"batch": B, "context": ctx, "new_tokens": new}
    torch.cuda.init()
    cupy.cuda.runtime.deviceSynchronize()
    pool = cupy.get_default_memory_pool()
    free0, total = cupy.cuda.runtime.memGetInfo()
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=B, max_seq_len=ctx + new,
                          verbose=False)
    rng = np.random.default_rng(3)
    prompts = rng.integers(100, sess.structure.vocab - 100, (B, ctx)).tolist()
    cupy.cuda.runtime.deviceSynchronize()
    free_c, _ = cupy.cuda.runtime.memGetInfo()
    res["eetjit_after_compile_MB"] = (free0 - free_c) / 2**20
    min_free = free_c
    for _ in range(2):   # 2nd run of a shape builds the prompt pass's memory plan
        sess.generate(prompts, max_new_tokens=new)
        cupy.cuda.runtime.deviceSynchronize()
        min_free = min(min_free, cupy.cuda.runtime.memGetInfo()[0])
    res["eetjit_memgetinfo_delta_MB"] = (free0 - min_free) / 2**20
    res["eetjit_cupy_pool_total_MB"] = pool.total_bytes() / 2**20
    res["eetjit_cupy_pool_used_MB"] = pool.used_bytes() / 2**20
    _log(f"[memory] eetjit: +{res['eetjit_memgetinfo_delta_MB']:.0f} MiB (cudaMemGetInfo; after compile "
         f"{res['eetjit_after_compile_MB']:.0f}), CuPy pool {res['eetjit_cupy_pool_total_MB']:.0f} MiB held")
    del sess
    pool.free_all_blocks()

    hf = bd._export_module().build_model("gpt2", size="base", seed=0, attn="sdpa").half().cuda().eval()
    torch.cuda.synchronize()
    res["hf_weights_MB"] = torch.cuda.memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    ids = torch.tensor(prompts, device="cuda")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                    pad_token_id=50256)
    torch.cuda.synchronize()
    res["hf_max_allocated_MB"] = torch.cuda.max_memory_allocated() / 2**20
    res["hf_max_reserved_MB"] = torch.cuda.max_memory_reserved() / 2**20
    _log(f"[memory] HF: max allocated {res['hf_max_allocated_MB']:.0f} MiB (weights {res['hf_weights_MB']:.0f}), "
         f"max reserved {res['hf_max_reserved_MB']:.0f} MiB")
    return res


def sec_prompt(args) -> dict:
    """GPT-2 small, batch 8 x 512 prompt pass: eetjit generate(1) vs HF generate(1) and HF forward."""
    import torch
    import eetjit
    bd = _bd()
    B, L, reps = 8, 512, 7
    res = {"batch": B, "prompt": L}
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=B, max_seq_len=L + 8,
                          verbose=False)
    rng = np.random.default_rng(5)
    prompts = rng.integers(100, sess.structure.vocab - 100, (B, L)).tolist()
    for _ in range(3):
        sess.generate(prompts, max_new_tokens=1)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.generate(prompts, max_new_tokens=1)
        ts.append(time.perf_counter() - t)
    res["eetjit_ms"] = 1e3 * statistics.median(ts)
    _log(f"[prompt] eetjit generate(1): {', '.join(f'{1e3 * t:.2f}' for t in ts)} ms")

    hf = bd._export_module().build_model("gpt2", size="base", seed=0, attn="sdpa").half().cuda().eval()
    ids = torch.tensor(prompts, device="cuda")
    mask = torch.ones_like(ids)

    def hf_gen():
        with torch.no_grad():
            hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=50256)
        torch.cuda.synchronize()

    def hf_fwd():
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask, use_cache=False)
        torch.cuda.synchronize()
    for name, fn in (("hf_generate1", hf_gen), ("hf_forward", hf_fwd)):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        res[f"{name}_ms"] = 1e3 * statistics.median(ts)
        _log(f"[prompt] {name}: {', '.join(f'{1e3 * t:.2f}' for t in ts)} ms")
    for k in ("eetjit", "hf_generate1", "hf_forward"):
        res[f"{k}_ktok_s"] = B * L / res[f"{k}_ms"]       # tokens per ms = thousands per s
    return res


_COMPILE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import eetjit
t1 = time.perf_counter()
s = eetjit.compile(sys.argv[1], device="cuda", dtype="float16", max_batch=1, max_seq_len=128, verbose=False)
t2 = time.perf_counter()
s.generate([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290]], max_new_tokens=8)
t3 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "first_generate_s": t3 - t2,
                              "total_s": t3 - t0}))
"""


def sec_compile(args) -> dict:
    res = {}
    cache = Path(tempfile.mkdtemp(prefix="eetjit-cold-cache-"))
    env = {**os.environ, "EETJIT_CACHE_DIR": str(cache)}
    for label in ("cold", "warm"):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, str(args.model)], env=env, capture_output=True,
                           text=True, timeout=max(10, args.section_timeout - 5))
        wall = time.perf_counter() - t
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            _log(f"[compile] {label} failed rc={p.returncode}: {p.stderr[-1500:]}")
            res[label] = {"error": p.stderr[-300:], "wall_s": wall}
            continue
        r = json.loads(line[0][7:])
        r["wall_s"] = wall
        res[label] = r
        _log(f"[compile] {label}: wall {wall:.1f} s (import {r['import_s']:.1f}, compile {r['compile_s']:.1f}, "
             f"first generate {r['first_generate_s']:.1f})")
    return res


# --------------------------------------------------------------------------------------------- driver


def _flush_partial(args, res):
    if args.section:
        (SECTION_DIR / f"{args.section}.partial.json").write_text(json.dumps(res, indent=2))


def run_section(args) -> int:
    SECTION_DIR.mkdir(parents=True, exist_ok=True)
    fn = {"medium": lambda: sec_decode(args, "medium"), "xl": lambda: sec_decode(args, "xl"),
          "memory": lambda: sec_memory(args), "prompt": lambda: sec_prompt(args),
          "compile": lambda: sec_compile(args)}[args.section]
    res = fn()
    (SECTION_DIR / f"{args.section}.json").write_text(json.dumps(res, indent=2))
    return 0


def drive(args) -> int:
    start = time.perf_counter()
    SECTION_DIR.mkdir(parents=True, exist_ok=True)
    for f in SECTION_DIR.glob("*.json"):
        f.unlink()
    card = _card()
    _log(f"card: {card}; budget {args.budget:.0f} s; sections {', '.join(args.sections)}")
    results = {"card": card, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "sections": {}}
    order = [s for s in SECTIONS if s in args.sections]
    for i, sec in enumerate(order):
        left = args.budget - (time.perf_counter() - start)
        keep = sum(RESERVE[s] for s in order[i + 1:])
        limit = left - keep - 3
        if limit < 15:
            _log(f"== {sec}: skipped (only {left:.0f} s left, {keep} s kept for later sections)")
            results["sections"][sec] = {"status": f"skipped: {left:.0f} s left"}
            continue
        _log(f"== {sec} (limit {limit:.0f} s)")
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--section", sec, "--model", str(args.model), "--model-dir",
               str(args.model_dir), "--new", str(args.new), "--ctx", str(args.ctx), "--repeats", str(args.repeats),
               "--section-timeout", str(int(limit))]
        try:
            p = subprocess.run(cmd, timeout=limit)
            status = "ok" if p.returncode == 0 else f"failed rc={p.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
        f, partial = SECTION_DIR / f"{sec}.json", SECTION_DIR / f"{sec}.partial.json"
        entry = json.loads(f.read_text()) if f.exists() else (
            {**json.loads(partial.read_text()), "partial": True} if partial.exists() else {})
        entry["status"] = status
        entry["section_s"] = time.perf_counter() - t
        results["sections"][sec] = entry
        _log(f"== {sec}: {status} in {entry['section_s']:.0f} s")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_more.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def print_table(results):
    f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"   # noqa: E731
    secs = results["sections"]
    print()
    print(f"eetjit vs Hugging Face, float16, card: {results['card']} ({results['date_utc']} UTC)")
    print("measure | eetjit | HF | HF/eetjit | floor | eetjit/floor | status")
    for size in ("medium", "xl"):
        e = secs.get(size)
        if e is None:
            continue
        hf, ee = e.get("hf_ms"), e.get("eetjit_ms")
        print(" | ".join([f"GPT-2 {size} decode B1 ctx{e.get('context', 64)} +{e.get('new_tokens', 64)}, ms/step",
                          f(ee), f(hf), f(hf / ee, 1) + "x" if hf and ee else "n/a", f(e.get("floor_ms")),
                          f(e.get("eetjit_ratio_floor"), 2) + "x" if ee else "n/a", e["status"]]))
    e = secs.get("memory")
    if e is not None:
        ee, hf = e.get("eetjit_memgetinfo_delta_MB"), e.get("hf_max_allocated_MB")
        print(" | ".join(["GPT-2 small peak memory B32 ctx512+128, MiB (eetjit cudaMemGetInfo delta; HF max alloc)",
                          f(ee, 0), f(hf, 0), f(hf / ee, 2) + "x" if ee and hf else "n/a", "", "", e["status"]]))
    e = secs.get("prompt")
    if e is not None:
        ee, hf, hff = e.get("eetjit_ms"), e.get("hf_generate1_ms"), e.get("hf_forward_ms")
        print(" | ".join(["GPT-2 small prompt pass B8x512, ms (HF generate(1) / HF forward)", f(ee),
                          f"{f(hf)} / {f(hff)}", f(hf / ee, 1) + "x" if ee and hf else "n/a", "", "", e["status"]]))
    e = secs.get("compile")
    if e is not None:
        c, w = e.get("cold", {}), e.get("warm", {})
        g = lambda r: "failed" if "error" in r else f(r.get("wall_s"), 1)   # noqa: E731
        print(" | ".join(["GPT-2 small compile (wall of a fresh process: import+compile+first generate), s cold / warm",
                          f"{g(c)} / {g(w)}", "", "", "", "", e["status"]]))
        for label, r in (("cold", c), ("warm", w)):
            if "compile_s" in r:
                print(f"    {label}: import {r['import_s']:.1f} s, eetjit.compile {r['compile_s']:.1f} s, "
                      f"first generate {r['first_generate_s']:.1f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="GPT-2 small ONNX export (graphs/export.py --size base)")
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/eetjit-models"), help="where medium/XL are exported")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections together")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--new", type=int, default=64, help="new tokens per generate (decode sections)")
    ap.add_argument("--ctx", type=int, default=64, help="prompt length (decode sections)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--section-timeout", type=int, default=120, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}")
    if args.section:
        return run_section(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
