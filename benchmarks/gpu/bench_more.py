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

SECTIONS = ("medium", "memory", "prompt", "compile", "xl", "bert", "longctx", "wide", "chart")
DEFAULT_SECTIONS = ("medium", "memory", "prompt", "compile", "xl")
GROUPS = {"old": DEFAULT_SECTIONS, "new": ("bert", "longctx", "wide", "chart"), "all": SECTIONS}
# seconds kept back for a section while the ones before it run (so an overrunning early section cannot starve it)
RESERVE = {"medium": 0, "memory": 45, "prompt": 40, "compile": 60, "xl": 0,
           "bert": 45, "longctx": 45, "wide": 45, "chart": 70}
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
    model = _gpt2_model(config, seed=11)      # HF's own init skipped: minutes less for the XL size
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
    sess = eetjit.compile(str(path), device="cuda", dtype="float16", max_batch=B,
                          max_seq_len=ctx + new + 8 + bd.HEADROOM, verbose=False)
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

    torch.cuda.synchronize()
    hf_free0 = cupy.cuda.runtime.memGetInfo()[0]
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
    # the same measure as eetjit's: the fall of cudaMemGetInfo's free memory (torch's allocator keeps its blocks, so
    # at the end it still holds its peak; its cuBLAS workspace is in it too)
    res["hf_memgetinfo_delta_MB"] = (hf_free0 - cupy.cuda.runtime.memGetInfo()[0]) / 2**20
    _log(f"[memory] HF: max allocated {res['hf_max_allocated_MB']:.0f} MiB (weights {res['hf_weights_MB']:.0f}), "
         f"max reserved {res['hf_max_reserved_MB']:.0f} MiB, cudaMemGetInfo +{res['hf_memgetinfo_delta_MB']:.0f} MiB")
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
        res[f"{name}_ms"], ts = _times_ms(fn, 3, reps)
        _log(f"[prompt] {name}: {', '.join(f'{t:.2f}' for t in ts)} ms")
    for k in ("eetjit", "hf_generate1", "hf_forward"):
        res[f"{k}_ktok_s"] = B * L / res[f"{k}_ms"]       # tokens per ms = thousands per s
    return res


_COMPILE_CHILD = r"""
import cProfile, io, json, pstats, sys, time
t0 = time.perf_counter()
import eetjit
from eetjit import codegen
from eetjit.backends import cuda_device
t1 = time.perf_counter()
# Each kernel's first launch: Numba compiles it there (or loads it from its disk cache). The launch is queued, so
# the time is the host's: compile + load + queueing.
first = {}
launch = cuda_device.Device.launch
def timed_launch(self, kernel, *args, **kw):
    if kernel in first:
        return launch(self, kernel, *args, **kw)
    t = time.perf_counter()
    launch(self, kernel, *args, **kw)
    first[kernel] = (getattr(kernel, "module_name", None) or getattr(kernel, "py_func", kernel).__module__,
                     time.perf_counter() - t)
cuda_device.Device.launch = timed_launch
# Where a start goes, by phase (wall s summed over calls): reading the model, fusing, the Session (plan, weight
# uploads), the dry run of a new shape, the disk-cache checks (which load what is cached), the workers, and every
# load from Numba's disk cache after eetjit.compile (where they happen; see below). A warm start's loads happen in
# the checks, before the first launch, so the first-launch times above then read ~0.
phases = {}
def timed(owner, name, label):
    plain = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return plain(*a, **k)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)
import eetjit.rewrite
from eetjit.codegen import workers
from eetjit.runtime import cuda_graph, session
for owner, name, label in ((eetjit, "load", "load"), (eetjit.rewrite, "fuse", "fuse"),
                           (session.Session, "__init__", "session"), (cuda_graph.CudaGenerator, "dry_run", "dry_run"),
                           (workers, "pending_jobs", "disk_checks"), (workers, "compile_elsewhere", "workers")):
    timed(owner, name, label)
# how long eetjit.compile waits for its CUDA setup thread (imports, context, Numba's registries) after the fuse
start_setup = eetjit._start_device_setup
class TimedJoin:
    def __init__(self, thread):
        self.thread = thread
    def join(self):
        t = time.perf_counter()
        self.thread.join()
        phases["setup_wait"] = phases.get("setup_wait", 0.0) + time.perf_counter() - t
eetjit._start_device_setup = lambda device: (lambda th: th and TimedJoin(th))(start_setup(device))
prof = cProfile.Profile() if sys.argv[2] == "profile" else None
if prof:
    prof.enable()
s = eetjit.compile(sys.argv[1], device="cuda", dtype="float16", max_batch=1, max_seq_len=128, verbose=False)
t2 = time.perf_counter()
# Numba's disk-cache loads, timed from here on (they happen in the first generate): importing numba.cuda for the
# patch before eetjit.compile would put the import, which compile's setup thread does beside the fuse, on this one.
# Where Numba is not imported yet (a warm start launches cached cubins without it: eetjit.backends.cuda_direct),
# nothing is patched: importing it here would time an import the start does not do.
if "numba.cuda" in sys.modules:
    from numba.cuda.core import caching
    timed(caching.Cache, "load_overload", "disk_loads")
s.generate([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290]], max_new_tokens=8)
t3 = time.perf_counter()
from eetjit.backends import cuda_direct
if prof:
    prof.disable()
print("RESULT " + json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "first_generate_s": t3 - t2,
                              "total_s": t3 - t0, "kernels": codegen.stats(), "phases_s": phases,
                              "direct": cuda_direct.stats(), "numba_imported": "numba.cuda" in sys.modules,
                              "first_launch_s": sorted(first.values(), key=lambda x: -x[1])}))
if prof:
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(45)
    print("PROFILE " + json.dumps(text.getvalue()))
"""


def sec_compile(args) -> dict:
    """Cold (a fresh EETJIT_CACHE_DIR) then warm (the same one), each a fresh process, timed without a profiler.
    With --compile-profile, a second cold / warm pair on another fresh cache runs under cProfile (its figures are
    inflated by the profiler: Numba's compiler is millions of Python calls) and saves the profiles."""
    res = {}
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [("cold", "plain"), ("warm", "plain")]
    if args.compile_profile:
        runs += [("cold_profiled", "profile"), ("warm_profiled", "profile")]
    # Python writes its bytecode caches as on any install: the GPU machine sets PYTHONDONTWRITEBYTECODE, so there
    # every process compiled eetjit's modules, the rendered kernel modules and the wheels run.sh installs (with
    # --no-compile) from source, ~0.5-0.7 s of each warm start that no user would pay (benchmarks/gpu/NOTES.md,
    # session 16). The cold run writes them (or finds them from an earlier run); the warm run reads them.
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for label, mode in runs:
        if label.startswith("cold"):
            cache = Path(tempfile.mkdtemp(prefix="eetjit-cold-cache-"))
            env = {**base_env, "EETJIT_CACHE_DIR": str(cache)}
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, str(args.model), mode], env=env,
                           capture_output=True, text=True, timeout=max(10, args.section_timeout - 5))
        wall = time.perf_counter() - t
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            _log(f"[compile] {label} failed rc={p.returncode}: {p.stderr[-1500:]}")
            res[label] = {"error": p.stderr[-300:], "wall_s": wall}
            continue
        r = json.loads(line[0][7:])
        r["wall_s"] = wall
        res[label] = r
        prof = [x for x in p.stdout.splitlines() if x.startswith("PROFILE ")]
        if prof:    # cProfile of compile + first generate (cumulative), for finding what a start still does
            (args.out / f"compile_{label}_profile.txt").write_text(json.loads(prof[0][8:]))
        # module eetjit_cuda_<op>_<digest> -> op (gemv_nk and gemv_mma stay apart)
        slowest = ", ".join(f"{m.split('_', 2)[2].rsplit('_', 1)[0] if m.count('_') >= 3 else m} {t:.1f}"
                            for m, t in r["first_launch_s"][:8])
        _log(f"[compile] {label}: wall {wall:.1f} s (import {r['import_s']:.1f}, compile {r['compile_s']:.1f}, "
             f"first generate {r['first_generate_s']:.1f}); {len(r['first_launch_s'])} kernels, first launches "
             f"{sum(t for _, t in r['first_launch_s']):.1f} s, slowest s: {slowest}")
        _log(f"[compile] {label} by phase, s: " + ", ".join(f"{k} {v:.2f}" for k, v in r.get("phases_s", {}).items()))
        _log(f"[compile] {label}: cubins launched without Numba {r.get('direct')}; Numba's CUDA target imported: "
             f"{r.get('numba_imported')}")
    return res


# --------------------------------------------------------------------------------------------- new sections
# bert, longctx, wide, chart: each has a real-size mode (GPU, defaults below) and a --tiny mode (the tiny fixtures
# of graphs/, Hugging Face on the CPU in float32) that runs end to end under Numba's CUDA simulator.


def _hf_device(args) -> str:
    return args.hf_device or ("cpu" if args.tiny else "cuda")


def _hf_dtype(args):
    import torch
    name = args.hf_dtype or ("float32" if _hf_device(args) == "cpu" else "float16")
    return getattr(torch, name)


def _torch_sync(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _times_ms(fn, warm, reps):
    """(median ms, all ms) of fn() after `warm` untimed calls; fn must return only when the device is done."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t))
    return statistics.median(ts), ts


def _rel_err(got, want) -> float:
    """max |got - want| / max |want| (the error relative to the reference's largest magnitude)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _bandwidth_or_none(args):
    if args.tiny:
        return None
    try:
        return _bd().copy_bandwidth()
    except Exception as e:  # noqa: BLE001
        _log(f"copy bandwidth failed: {type(e).__name__}: {e}")
        return None


def _last_step_logits(sess, B, vocab):
    """Logits of the last decode step that ran for batch B (the step's fixed output buffer), host float32."""
    step = sess._generator.steps[B]
    return np.asarray(sess.backend.to_host(step.logits), np.float32).reshape(B, -1)[:, :vocab]


def _replay_ms_or_nan(sess, B):
    step = sess._generator.steps.get(B)
    if step is None or step.graph is None:     # simulator, EETJIT_CUDA_GRAPHS=0, or capture failed
        return float("nan")
    return _bd().replay_ms(step, sess.backend.dev)


def _export_bert(args, path: Path) -> float:
    """graphs/export.py --family bert --flavor ts17-eager into path's folder; seconds."""
    t = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "graphs" / "export.py"), "--size", "tiny" if args.tiny else "base", "--family",
           "bert", "--flavor", "ts17-eager", "--no-check", "--out", str(path.parent)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, args.section_timeout - 30))
    if p.returncode or not path.exists():
        raise RuntimeError(f"BERT export failed (rc={p.returncode}): {p.stdout[-1000:]} {p.stderr[-1500:]}")
    return time.perf_counter() - t


def sec_bert(args) -> dict:
    """BERT-base encoder, batch 32, lengths uniform in [32, 512] (seed 0), right-padded with a mask: eetjit
    Session.run (packed real tokens) against HF BertModel (sdpa) on the same weights; max relative error on real
    tokens against HF fp16 and HF fp32."""
    import torch
    import eetjit
    ex = _bd()._export_module()
    size = "tiny" if args.tiny else "base"
    path = Path(args.bert_model) if args.bert_model else (
        ROOT / "graphs" / "bert-ts17-eager.onnx" if args.tiny else Path(args.model_dir) / "bert-ts17-eager.onnx")
    res = {"model": f"bert-{size}", "onnx": str(path)}
    if not path.exists():
        res["export_s"] = _export_bert(args, path)
        _log(f"[bert] exported {path} in {res['export_s']:.1f} s")
    B = args.bert_batch or (3 if args.tiny else 32)
    lo, hi = (int(v) for v in (args.bert_lengths or ("2,12" if args.tiny else "32,512")).split(","))
    reps = args.bert_repeats or (1 if args.tiny else 20)
    warm = 0 if args.tiny else 3          # the simulator takes ~50 s a run even at 3 x 11 tokens
    rng = np.random.default_rng(0)
    lens = rng.integers(lo, hi + 1, B)
    S = int(lens.max())
    hf32 = ex.build_model("bert", size=size, seed=0, attn="sdpa")
    vocab = hf32.config.vocab_size
    mask = (np.arange(S)[None, :] < lens[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, (B, S)).astype(np.int64) * mask          # pads: id 0 (the pad token)
    tt = rng.integers(0, 2, (B, S)).astype(np.int64) * mask
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
    real = mask.astype(bool)
    res.update(batch=B, lengths=f"{lo}..{hi}", max_len=S, real_tokens=int(lens.sum()), padded_tokens=B * S,
               repeats=reps)
    _log(f"[bert] batch {B}, lengths {lo}..{hi} (seed 0): {res['real_tokens']} real of {B * S} padded tokens")

    t = time.perf_counter()
    sess = eetjit.compile(str(path), device="cuda", dtype="float16", max_batch=B, max_seq_len=max(S, 2),
                          verbose=False)
    res["eetjit_compile_s"] = time.perf_counter() - t
    t = time.perf_counter()
    (out,) = sess.run(None, feeds)
    res["eetjit_first_run_s"] = time.perf_counter() - t
    res["eetjit_packed"] = sess.stats.get("packed_runs", 0) > 0
    out = np.asarray(out, np.float32)
    _log(f"[bert] eetjit compile {res['eetjit_compile_s']:.1f} s, first run {res['eetjit_first_run_s']:.1f} s, "
         f"packed={res['eetjit_packed']}, output {out.shape}")
    ms, ts = _times_ms(lambda: sess.run(None, feeds), warm, reps)
    res["eetjit_ms"] = ms
    _log(f"[bert] eetjit Session.run (outputs to the host): median {ms:.3f} ms of {', '.join(f'{v:.2f}' for v in ts)}")
    try:   # the same packed plan without the copy of the outputs to the host (device time + launches)
        from eetjit.feeds import validate_feeds
        from eetjit.plan.packing import INDEX
        plan = sess._packed_plan()
        if plan is not None:
            f2 = {**validate_feeds(sess.graph, feeds), INDEX: np.flatnonzero(mask.reshape(-1)).astype(np.int64)}

            def run_dev():
                plan.run(f2, None)
                sess.backend.synchronize()
            res["eetjit_device_ms"], _ = _times_ms(run_dev, warm, reps)
            _log(f"[bert] eetjit packed plan, no host copy: {res['eetjit_device_ms']:.3f} ms")
            # Session.run's own CapturedPlan of this signature (its feeds staged on the device): was it captured
            # as one graph, and each kernel op of it captured alone: device time per op type
            cp = next((c for c in sess._captured.plans.values() if c.plan is plan), None) \
                if getattr(sess, "_captured", None) is not None else None
            if cp is not None:
                res["eetjit_run_graph"] = "captured" if cp.graph is not None else (cp.capture_failed or "eager")
                _log(f"[bert] Session.run graph: {res['eetjit_run_graph']}")
                if cp.graph is not None:       # that graph replayed alone: device time, no staging, no host copy

                    def replay():
                        cp.run()
                        sess.backend.synchronize()
                    res["eetjit_graph_ms"], _ = _times_ms(replay, warm, reps)
                    _log(f"[bert] eetjit graph replay, no host copy: {res['eetjit_graph_ms']:.3f} ms")
            if cp is not None and not args.tiny:
                from profile_prompt import op_type_totals
                rows = cp.profile(repeats=5)
                res["eetjit_ops_device_ms"] = sum(ms for _, _, ms in rows if ms == ms)
                res["eetjit_ops"] = op_type_totals(rows)
                _log(f"[bert] kernel ops alone (device): {res['eetjit_ops_device_ms']:.3f} ms; " + ", ".join(
                    f"{k} {ms:.2f} ({n})" for k, ms, n in res["eetjit_ops"][:8]) +
                    f"; not capturable alone: {sum(1 for r in rows if r[2] != r[2])}")
    except Exception as e:  # noqa: BLE001
        _log(f"[bert] device-only timing failed: {type(e).__name__}: {e}")
    _flush_partial(args, res)
    sess = None          # frees its device buffers (the CuPy pool keeps them for reuse)

    dev, dt = _hf_device(args), _hf_dtype(args)
    res["hf"] = f"BertModel sdpa {str(dt).replace('torch.', '')} on {dev}"
    t_ids, t_mask, t_tt = (torch.from_numpy(a).to(dev) for a in (ids, mask, tt))

    def hf_out(m):
        with torch.no_grad():
            o = m(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_tt).last_hidden_state
        _torch_sync(dev)
        return o
    ref32 = hf_out(hf32.to(dev)).float().cpu().numpy()
    hf = hf32.to(dt).eval()
    ref = hf_out(hf).float().cpu().numpy()
    res["hf_ms"], ts = _times_ms(lambda: hf_out(hf), warm, reps)
    res["hf_to_host_ms"], _ = _times_ms(lambda: hf_out(hf).float().cpu(), 1, reps)
    _log(f"[bert] HF: median {res['hf_ms']:.3f} ms of {', '.join(f'{v:.2f}' for v in ts)}; with the output "
         f"to the host {res['hf_to_host_ms']:.3f} ms")
    res["rel_err_vs_hf"] = _rel_err(out[real], ref[real])
    res["rel_err_vs_hf_fp32"] = _rel_err(out[real], ref32[real])
    res["hf_rel_err_vs_hf_fp32"] = _rel_err(ref[real], ref32[real])
    res["max_abs_err_vs_hf"] = float(np.max(np.abs(out[real] - ref[real])))
    res["finite"] = bool(np.isfinite(out[real]).all())
    _log(f"[bert] max rel err on real tokens (max|d| / max|ref|): eetjit vs HF {res['rel_err_vs_hf']:.2e}, "
         f"eetjit vs HF fp32 {res['rel_err_vs_hf_fp32']:.2e}, HF vs HF fp32 {res['hf_rel_err_vs_hf_fp32']:.2e}; "
         f"max abs vs HF {res['max_abs_err_vs_hf']:.3e}")
    return res


def _gpt2_model(config, seed=11):
    """GPT2LMHeadModel for `config` with graphs/export.py init_weights (fp32, CPU, eval)."""
    import torch
    import transformers
    ex = _bd()._export_module()
    try:        # skip HF's own init (init_weights overwrites every parameter)
        from transformers.modeling_utils import no_init_weights
    except ImportError:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:
            from contextlib import nullcontext as no_init_weights
    with torch.random.fork_rng(devices=[]), no_init_weights():
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
    ex.init_weights(model, seed, config.n_embd)
    return model.to(torch.float32).eval()


def sec_longctx(args) -> dict:
    """A GPT-2-style decoder with learned positions extended to 16448 (2 layers of 768 / 12 heads, vocab 4096):
    eetjit fp16 decode ms/step at context 16384, and the logits of one decode step at that context against
    fp32 references (HF fp32 forward of the same tokens; eetjit's own fp32 session)."""
    import torch
    import eetjit
    bd = _bd()
    ex = bd._export_module()
    tiny = args.tiny
    ctx = args.longctx_ctx or (64 if tiny else 16384)
    new = args.longctx_new or (3 if tiny else 32)
    layers = args.longctx_layers or 2
    reps = 1 if tiny else args.repeats
    config = ex.make_config("gpt2", "tiny" if tiny else "base", "eager")
    config.n_positions = ctx + 64
    config.n_layer = layers
    if not tiny:
        config.vocab_size, config.bos_token_id, config.eos_token_id = 4096, 0, 0
    V = config.vocab_size
    res = {"model": f"gpt2-style {config.n_embd} x {layers} layers x {config.n_head} heads, vocab {V}, "
                    f"n_positions {config.n_positions}", "context": ctx, "new_tokens": new}
    t = time.perf_counter()
    model = _gpt2_model(config)
    out_dir = (Path(tempfile.mkdtemp(prefix="eetjit-longctx-")) if tiny else Path(args.model_dir) / "gpt2-longctx")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpt2-ts17-eager.onnx"
    ex.export_onnx(ex.wrap("gpt2", model), "gpt2", "ts17", path, ex.make_inputs("gpt2", V, seed=0))
    res["build_export_s"] = time.perf_counter() - t
    _log(f"[longctx] built and exported {res['model']} in {res['build_export_s']:.1f} s")
    bw = _bandwidth_or_none(args)

    t = time.perf_counter()
    sess = eetjit.compile(str(path), device="cuda", dtype="float16", max_batch=1,
                          max_seq_len=ctx + new + 8 + _bd().HEADROOM, verbose=False)     # room for replay_ms
    res["eetjit_compile_s"] = time.perf_counter() - t
    rng = np.random.default_rng(9)
    prompt = rng.integers(3, V - 3, (1, ctx)).tolist()
    t = time.perf_counter()
    seq = sess.generate(prompt, max_new_tokens=2)         # prompt pass + one decode step at context ctx + 1
    res["eetjit_first_generate_s"] = time.perf_counter() - t
    tok1 = seq[0][ctx]
    logits16 = _last_step_logits(sess, 1, V)[0]
    _log(f"[longctx] eetjit fp16 compile {res['eetjit_compile_s']:.1f} s, first generate(2) "
         f"{res['eetjit_first_generate_s']:.1f} s, first token {tok1}")

    def run_eet(n):
        return sess.generate(prompt, max_new_tokens=n)
    t = time.perf_counter()
    for _ in range(1 if tiny else 2):
        run_eet(new)
    _log(f"[longctx] eetjit warm-up {time.perf_counter() - t:.1f} s")
    ms, eet_tokens = bd.per_step(run_eet, new, reps, "eetjit")
    res["eetjit_ms"] = ms
    res["eetjit_replay_ms"] = _replay_ms_or_nan(sess, 1)
    s = sess.structure
    kv_bytes = 2 * s.num_layers * s.hidden * (ctx + new // 2) * 2
    params = sum(int(np.prod(v.const.shape)) for n in sess.graph.nodes if n.domain == "eet"
                 and n.op_type not in ("Embedding",) for v in n.inputs if v is not None and v.is_const)
    res["kv_MB"] = kv_bytes / 1e6
    if bw:
        res["copy_tb_s"] = bw / 1e12
        res["floor_ms"] = 1e3 * (2 * params + kv_bytes) / bw
    _log(f"[longctx] eetjit fp16 {ms:.3f} ms/step at context {ctx} (replay {res['eetjit_replay_ms']:.3f} ms, "
         f"floor {res.get('floor_ms', float('nan')):.3f} ms)")
    _flush_partial(args, res)
    sess = None

    dev = _hf_device(args)
    try:
        model.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001
        pass
    hf = model.to(dev)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([prompt[0] + [tok1]], device=dev), use_cache=False).logits[0, -2:]
    ref = ref.float().cpu().numpy()
    del hf, model
    if dev == "cuda":
        torch.cuda.empty_cache()
    res["first_token_equals_hf_fp32"] = bool(int(np.argmax(ref[0])) == tok1)
    res["step_rel_err_vs_hf_fp32"] = _rel_err(logits16, ref[1])
    res["step_argmax_equals_hf_fp32"] = bool(np.argmax(logits16) == np.argmax(ref[1]))
    res["finite"] = bool(np.isfinite(logits16).all())
    _log(f"[longctx] decode step logits at context {ctx + 1} vs HF fp32: max rel err "
         f"{res['step_rel_err_vs_hf_fp32']:.2e}, argmax equal {res['step_argmax_equals_hf_fp32']}; first token "
         f"equal {res['first_token_equals_hf_fp32']}")
    _flush_partial(args, res)

    if not args.no_longctx_fp32:
        t = time.perf_counter()
        s32 = eetjit.compile(str(path), device="cuda", dtype="float32", max_batch=1, max_seq_len=ctx + 8,
                             verbose=False)
        seq32 = s32.generate(prompt, max_new_tokens=2)
        logits32 = _last_step_logits(s32, 1, V)[0]
        res["eetjit_fp32_s"] = time.perf_counter() - t
        res["first_token_equals_eetjit_fp32"] = seq32[0][ctx] == tok1
        if seq32[0][ctx] == tok1:   # same inputs to the decode step: compare its logits
            res["step_rel_err_vs_eetjit_fp32"] = _rel_err(logits16, logits32)
        res["eetjit_fp32_step_rel_err_vs_hf_fp32"] = _rel_err(logits32, ref[1])
        _log(f"[longctx] eetjit fp32 session ({res['eetjit_fp32_s']:.1f} s): fp32 vs HF fp32 "
             f"{res['eetjit_fp32_step_rel_err_vs_hf_fp32']:.2e}; fp16 vs fp32 "
             f"{res.get('step_rel_err_vs_eetjit_fp32', float('nan')):.2e}")
    return res


def _wide_graph(W: dict, B: int, S: int, E: int, H: int):
    """One pre-norm GPT-2-style layer as fused eet ops (what the rewrite makes of an export), built directly:
    y, r = AddLayerNorm(MLP(n2), s) with n2, s = AddLayerNorm(Attn(LN(x)), x); outputs y (the next layer's
    normed input) and r (the layer output)."""
    from eetjit.ir import Graph
    g = Graph("wide-layer")
    c = {k: g.constant(v, k) for k, v in W.items()}
    x = g.value("x", np.float32, (B, S, E))
    g.inputs.append(x)
    D = E // H
    (n1,) = g.add_node("LayerNorm", [x, c["ln1_g"], c["ln1_b"]], 1, {"epsilon": 1e-5}, domain="eet").outputs
    q, k, v = g.add_node("Linear", [n1, c["w_qkv"], c["b_qkv"]], 3, {"activation": "none", "split": [E, E, E]},
                         domain="eet").outputs
    (a,) = g.add_node("Attention", [q, k, v], 1, {"num_heads": H, "kv_num_heads": H, "head_dim": D,
                                                   "scale": 1.0 / float(np.sqrt(D)), "causal": 1}, domain="eet").outputs
    (o,) = g.add_node("Linear", [a, c["w_o"], c["b_o"]], 1, {"activation": "none"}, domain="eet").outputs
    n2, s = g.add_node("AddLayerNorm", [o, x, c["ln2_g"], c["ln2_b"]], 2, {"epsilon": 1e-5}, domain="eet").outputs
    (f,) = g.add_node("Linear", [n2, c["w_fc"], c["b_fc"]], 1, {"activation": "gelu_tanh"}, domain="eet").outputs
    (m,) = g.add_node("Linear", [f, c["w_pr"], c["b_pr"]], 1, {"activation": "none"}, domain="eet").outputs
    y, r = g.add_node("AddLayerNorm", [m, s, c["ln3_g"], c["ln3_b"]], 2, {"epsilon": 1e-5}, domain="eet").outputs
    y.name, r.name = "y", "r"
    g.values["y"], g.values["r"] = y, r
    g.outputs = [y, r]
    return g


def sec_wide(args) -> dict:
    """One transformer layer at hidden 16384 (128 heads of 128, MLP 4x: 3.2 G params, 6.4 GB fp16), batch 1 x 128
    tokens, built directly as a graph of fused eet ops (no ONNX export: 12.9 GB fp32 would take minutes), run by
    eetjit fp16 and checked against the same layer in torch fp32."""
    import torch
    import torch.nn.functional as F
    import eetjit
    tiny = args.tiny
    E = args.wide_hidden or (32 if tiny else 16384)
    H = args.wide_heads or (4 if tiny else 128)
    S = args.wide_seq or (8 if tiny else 128)
    B, D = 1, E // H
    dev = _hf_device(args)
    res = {"hidden": E, "heads": H, "head_dim": D, "batch": B, "seq": S}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * std + mean
    W = {"ln1_g": rnd(E, std=0.1, mean=1.0), "ln1_b": rnd(E, std=0.1),
         "w_qkv": rnd(E, 3 * E, std=E ** -0.5), "b_qkv": rnd(3 * E, std=0.1),
         "w_o": rnd(E, E, std=E ** -0.5), "b_o": rnd(E, std=0.1),
         "ln2_g": rnd(E, std=0.1, mean=1.0), "ln2_b": rnd(E, std=0.1),
         "w_fc": rnd(E, 4 * E, std=E ** -0.5), "b_fc": rnd(4 * E, std=0.1),
         "w_pr": rnd(4 * E, E, std=(4 * E) ** -0.5), "b_pr": rnd(E, std=0.1),
         "ln3_g": rnd(E, std=0.1, mean=1.0), "ln3_b": rnd(E, std=0.1)}
    x = rnd(B, S, E)
    res["params_M"] = sum(w.numel() for w in W.values()) / 1e6

    with torch.no_grad():   # the reference, fp32 (no TF32)
        ln = lambda v, g_, b_: F.layer_norm(v, (E,), g_, b_, 1e-5)   # noqa: E731
        qkv = ln(x, W["ln1_g"], W["ln1_b"]) @ W["w_qkv"] + W["b_qkv"]
        q, k, v = (t_.reshape(B, S, H, D).transpose(1, 2) for t_ in qkv.split(E, dim=-1))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D ** -0.5)
        s_ = att.transpose(1, 2).reshape(B, S, E) @ W["w_o"] + W["b_o"] + x
        h = F.gelu(ln(s_, W["ln2_g"], W["ln2_b"]) @ W["w_fc"] + W["b_fc"], approximate="tanh")
        r_ref = h @ W["w_pr"] + W["b_pr"] + s_
        y_ref = ln(r_ref, W["ln3_g"], W["ln3_b"])
    _torch_sync(dev)
    y_ref, r_ref = y_ref.cpu().numpy(), r_ref.cpu().numpy()
    Wn = {k_: w.cpu().numpy() for k_, w in W.items()}
    xn = x.cpu().numpy()
    del W, x, qkv, q, k, v, att, s_, h
    if dev == "cuda":
        torch.cuda.empty_cache()
    res["build_ref_s"] = time.perf_counter() - t
    _log(f"[wide] {res['params_M']:.0f} M params; weights + fp32 reference on {dev} in {res['build_ref_s']:.1f} s")

    t = time.perf_counter()
    graph = _wide_graph(Wn, B, S, E, H)
    sess = eetjit.compile(graph, device="cuda", dtype="float16", max_batch=B, max_seq_len=max(S, 2), verbose=False,
                          fuse=False)
    res["eetjit_compile_s"] = time.perf_counter() - t
    del Wn
    feeds = {"x": xn}
    t = time.perf_counter()
    y, r = sess.run(None, feeds)
    res["eetjit_first_run_s"] = time.perf_counter() - t
    _log(f"[wide] eetjit compile (upload) {res['eetjit_compile_s']:.1f} s, first run {res['eetjit_first_run_s']:.1f} s")
    res["eetjit_ms"], ts = _times_ms(lambda: sess.run(None, feeds), 0, 1 if tiny else 5)
    try:
        plan = sess.plan

        def run_dev():
            plan.run(feeds, None)
            sess.backend.synchronize()
        res["eetjit_device_ms"], _ = _times_ms(run_dev, 1, 1 if tiny else 5)
    except Exception as e:  # noqa: BLE001
        _log(f"[wide] device-only timing failed: {type(e).__name__}: {e}")
    flops = 2 * B * S * res["params_M"] * 1e6 + 4 * B * H * S * S * D / 2
    res["eetjit_tflops"] = flops / (res.get("eetjit_device_ms", res["eetjit_ms"]) * 1e-3) / 1e12
    res["rel_err_y"] = _rel_err(y, y_ref)
    res["rel_err_r"] = _rel_err(r, r_ref)
    res["finite"] = bool(np.isfinite(y).all() and np.isfinite(r).all())
    _log(f"[wide] eetjit run {res['eetjit_ms']:.3f} ms (device-side {res.get('eetjit_device_ms', float('nan')):.3f} "
         f"ms, {res['eetjit_tflops']:.0f} TFLOP/s); max rel err vs torch fp32: layer output {res['rel_err_r']:.2e}, "
         f"normed {res['rel_err_y']:.2e}")
    return res


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def sec_chart(args) -> dict:
    """GPT-2 small fp16 greedy decode: eetjit ms/step vs HF generate for batches x contexts (prompt = context,
    clipped to n_positions - new), speed-up = HF / eetjit; JSON rows, a markdown table and a PNG in OUT."""
    import torch
    import eetjit
    bd = _bd()
    tiny = args.tiny
    batches = _ints(args.chart_batches or ("1,2" if tiny else "1,8,32"))
    contexts = _ints(args.chart_contexts or ("8,16" if tiny else "64,256,1024"))
    new = args.chart_new or (3 if tiny else 32)
    peers = [p for p in (args.chart_peers or "hf").split(",") if p and p != "none"]
    reps = 1 if tiny else args.chart_repeats
    warm = 1 if tiny else 2
    deadline = time.perf_counter() + args.section_timeout - 25          # keep time to write the table and plot
    res = {"new_tokens": new, "batches": batches, "contexts": contexts, "peers": peers, "repeats": reps, "rows": [],
           "card": "CUDA simulator" if tiny else _card()}
    t = time.perf_counter()
    sess = eetjit.compile(str(args.model), device="cuda", dtype="float16", max_batch=max(batches),
                          max_seq_len=max(contexts) + new + 8 + bd.HEADROOM, verbose=False)   # room for replay_ms
    res["eetjit_compile_s"] = time.perf_counter() - t
    npos = sess.structure.max_positions or 10 ** 9
    V = sess.structure.vocab
    dev, dt = _hf_device(args), _hf_dtype(args)
    hf = None
    if peers:
        hf = bd._export_module().build_model("gpt2", size="tiny" if tiny else "base", seed=0, attn="sdpa")
        hf = hf.to(dev).to(dt).eval()
        pad = hf.config.eos_token_id
    try:
        for B in batches:
            for ctx in contexts:
                if time.perf_counter() > deadline:
                    _log(f"[chart] out of time: {B} x {ctx} skipped")
                    res["rows"].append({"batch": B, "context": ctx, "skipped": "time"})
                    continue
                P = min(ctx, npos - new)
                rng = np.random.default_rng(B * 1000 + ctx)
                prompts = rng.integers(3, V - 3, (B, P)).tolist()
                row = {"batch": B, "context": ctx, "prompt": P}

                def run_eet(n):
                    return sess.generate(prompts, max_new_tokens=n)
                t = time.perf_counter()
                for _ in range(warm):
                    run_eet(new)
                row["eetjit_warmup_s"] = time.perf_counter() - t
                row["eetjit_ms"], eet_tokens = bd.per_step(run_eet, new, reps, f"eetjit {B}x{P}")
                row["eetjit_replay_ms"] = _replay_ms_or_nan(sess, B)
                for peer in peers:
                    if time.perf_counter() > deadline:
                        row[f"{peer}_ms"] = None
                        continue
                    kw = {"cache_implementation": "static"} if peer == "hf-static" else {}
                    ids = torch.tensor(prompts, device=dev)
                    mask = torch.ones_like(ids)

                    def run_hf(n, kw=kw):
                        with torch.no_grad():
                            o = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                            do_sample=False, pad_token_id=pad, **kw)
                        _torch_sync(dev)
                        return o[:, P:].tolist()
                    try:
                        for _ in range(warm):
                            run_hf(new)
                        row[f"{peer}_ms"], hf_tokens = bd.per_step(run_hf, new, reps, f"{peer} {B}x{P}")
                        row[f"{peer}_speedup"] = row[f"{peer}_ms"] / row["eetjit_ms"]
                    except Exception as e:  # noqa: BLE001
                        _log(f"[chart] {peer} {B}x{P} failed: {type(e).__name__}: {e}")
                        row[f"{peer}_ms"] = None
                        continue
                    if peer == "hf":
                        row["tokens_agree_first1"] = float(np.mean([a[P:P + 1] == b[:1]
                                                                    for a, b in zip(eet_tokens, hf_tokens)]))
                _log(f"[chart] {B} x {P}: eetjit {row['eetjit_ms']:.3f} ms/step (replay "
                     f"{row['eetjit_replay_ms']:.3f}), " + ", ".join(
                         f"{p} {row.get(f'{p}_ms') or float('nan'):.3f}" for p in peers))
                res["rows"].append(row)
                _flush_partial(args, res)
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        md = chart_markdown(res, peers)
        (args.out / "chart.md").write_text(md + "\n")
        (args.out / "chart.json").write_text(json.dumps(res, indent=2))
        res["png"] = plot_chart(res, args.out / "chart.png")
    return res


def chart_markdown(res, peers=None) -> str:
    peers = peers if peers is not None else res.get("peers", ["hf"])
    f = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"   # noqa: E731
    head = ["batch", "context (prompt)", "eetjit ms/step", "graph replay"] + [f"{p} ms/step" for p in peers] + [
        f"{p} / eetjit" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['batch']} | {r['context']} | skipped ({r['skipped']}) |")
            continue
        cells = [str(r["batch"]), f"{r['context']} ({r['prompt']})", f(r.get("eetjit_ms")),
                 f(r.get("eetjit_replay_ms"))]
        cells += [f(r.get(f"{p}_ms")) for p in peers]
        cells += [("n/a" if r.get(f"{p}_speedup") is None else f"{r[f'{p}_speedup']:.1f}x") for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_chart(res, png: Path) -> str:
    """Speed-up (HF ms / eetjit ms) against context, one line per batch (and peer). Needs matplotlib; without it
    (the GPU image has none) says how to render the PNG from chart.json elsewhere."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        msg = f"no matplotlib: render with `python benchmarks/gpu/bench_more.py --plot {png.with_suffix('.json')}`"
        _log(f"[chart] {msg}")
        return msg
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    peers = res.get("peers", ["hf"])
    for p in peers:
        for B in res["batches"]:
            pts = [(r["context"], r[f"{p}_speedup"]) for r in res["rows"]
                   if r.get("batch") == B and r.get(f"{p}_speedup") is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", linestyle="-" if p == "hf" else "--",
                        label=f"batch {B}" + ("" if p == "hf" else f" ({p})"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(res["contexts"], [str(c) for c in res["contexts"]])
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("speed-up: HF generate ms/step / eetjit ms/step")
    ax.set_title(f"GPT-2 small fp16 greedy decode, {res['new_tokens']} new tokens"
                 + (f"\n{res['card']}" if res.get("card") else ""), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    _log(f"[chart] wrote {png}")
    return str(png)


# --------------------------------------------------------------------------------------------- driver


def _flush_partial(args, res):
    if args.section:
        (SECTION_DIR / f"{args.section}.partial.json").write_text(json.dumps(res, indent=2))


def run_section(args) -> int:
    SECTION_DIR.mkdir(parents=True, exist_ok=True)
    fn = {"medium": lambda: sec_decode(args, "medium"), "xl": lambda: sec_decode(args, "xl"),
          "memory": lambda: sec_memory(args), "prompt": lambda: sec_prompt(args),
          "compile": lambda: sec_compile(args), "bert": lambda: sec_bert(args),
          "longctx": lambda: sec_longctx(args), "wide": lambda: sec_wide(args),
          "chart": lambda: sec_chart(args)}[args.section]
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
        # the child gets this process's own arguments (so every section option reaches it), then its section
        cmd = [sys.executable, __file__, *args.argv, "--section", sec, "--section-timeout", str(int(limit))]
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
        for label, a, b in (("cudaMemGetInfo delta, both", ee, e.get("hf_memgetinfo_delta_MB")),
                            ("eetjit CuPy pool held; HF max reserved", e.get("eetjit_cupy_pool_total_MB"),
                             e.get("hf_max_reserved_MB"))):
            print(" | ".join([f"GPT-2 small peak memory B32 ctx512+128, MiB ({label})", f(a, 0), f(b, 0),
                              f(b / a, 2) + "x" if a and b else "n/a", "", "", e["status"]]))
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
    e = secs.get("bert")
    if e is not None:
        ee, hf = e.get("eetjit_ms"), e.get("hf_ms")
        print(" | ".join([f"BERT {e.get('model', '')} encoder B{e.get('batch')} lengths {e.get('lengths')} "
                          f"({e.get('real_tokens')} real / {e.get('padded_tokens')} padded tokens), ms: eetjit "
                          f"Session.run (packed={e.get('eetjit_packed')}; device-side {f(e.get('eetjit_device_ms'))}); "
                          f"HF {e.get('hf', '')} (with output to host {f(e.get('hf_to_host_ms'))})",
                          f(ee), f(hf), f(hf / ee, 2) + "x" if ee and hf else "n/a", "", "", e["status"]]))
        print(f"    BERT numerics on real tokens, max|d|/max|ref|: eetjit vs HF {f(e.get('rel_err_vs_hf'), 5)}, "
              f"eetjit vs HF fp32 {f(e.get('rel_err_vs_hf_fp32'), 5)}, HF vs HF fp32 "
              f"{f(e.get('hf_rel_err_vs_hf_fp32'), 5)}; finite {e.get('finite')}")
    e = secs.get("longctx")
    if e is not None:
        ee, fl = e.get("eetjit_ms"), e.get("floor_ms")
        print(" | ".join([f"long context: {e.get('model', '')} fp16 decode B1 ctx{e.get('context')}, ms/step "
                          f"(graph replay {f(e.get('eetjit_replay_ms'))})", f(ee), "", "", f(fl),
                          f(ee / fl, 1) + "x" if ee and fl else "n/a", e["status"]]))
        print(f"    decode-step logits at ctx {e.get('context')}+1, max|d|/max|ref|: fp16 vs HF fp32 "
              f"{f(e.get('step_rel_err_vs_hf_fp32'), 5)} (argmax equal {e.get('step_argmax_equals_hf_fp32')}), "
              f"fp16 vs eetjit fp32 {f(e.get('step_rel_err_vs_eetjit_fp32'), 5)}, eetjit fp32 vs HF fp32 "
              f"{f(e.get('eetjit_fp32_step_rel_err_vs_hf_fp32'), 5)}; first token = HF fp32 "
              f"{e.get('first_token_equals_hf_fp32')}, = eetjit fp32 {e.get('first_token_equals_eetjit_fp32')}")
    e = secs.get("wide")
    if e is not None:
        print(" | ".join([f"one layer at hidden {e.get('hidden')} ({e.get('heads')} heads of {e.get('head_dim')}, "
                          f"{f(e.get('params_M'), 0)} M params), B1 x {e.get('seq')} tokens, ms (Session.run; "
                          f"device-side {f(e.get('eetjit_device_ms'))}, {f(e.get('eetjit_tflops'), 0)} TFLOP/s)",
                          f(e.get("eetjit_ms")), "", "", "", "", e["status"]]))
        print(f"    max|d|/max|ref| vs torch fp32: layer output {f(e.get('rel_err_r'), 5)}, normed "
              f"{f(e.get('rel_err_y'), 5)}; finite {e.get('finite')}")
    e = secs.get("chart")
    if e is not None and e.get("rows") is not None:
        print(f"GPT-2 small fp16 decode ms/step, {e.get('new_tokens')} new tokens, speed-up = HF / eetjit "
              f"({e['status']}; plot: {e.get('png', 'n/a')})")
        print(chart_markdown(e))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GPT-2 small ONNX export (graphs/export.py --size "
                    "base), for memory, prompt, compile and chart (--tiny default: graphs/gpt2-ts17-eager.onnx)")
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/eetjit-models"), help="where medium/XL are exported")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections together")
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma list of {', '.join(SECTIONS)}, or a group: old (the default), new (bert, longctx, "
                         f"wide, chart), all")
    ap.add_argument("--new", type=int, default=64, help="new tokens per generate (decode sections)")
    ap.add_argument("--ctx", type=int, default=64, help="prompt length (decode sections)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile-profile", action="store_true", help="compile section: also a cold / warm pair under "
                    "cProfile (saved to OUT/compile_*_profile.txt; its times are inflated by the profiler)")
    n = ap.add_argument_group("sections bert, longctx, wide, chart (defaults: the real sizes; --tiny: the tiny "
                              "fixtures of graphs/ for a simulator run, HF on the CPU in float32)")
    n.add_argument("--tiny", action="store_true", help="tiny sizes (NUMBA_ENABLE_CUDASIM=1 on a machine without GPU)")
    n.add_argument("--hf-device", default=None, help="device of the Hugging Face peers (default cuda; --tiny: cpu)")
    n.add_argument("--hf-dtype", default=None, help="dtype of the HF peers (default float16 on cuda, float32 on cpu)")
    n.add_argument("--bert-model", default=None, help="BERT ts17-eager export (default MODEL_DIR/bert-ts17-eager.onnx, "
                   "exported there by the section when missing)")
    n.add_argument("--bert-batch", type=int, default=None, help="default 32")
    n.add_argument("--bert-lengths", default=None, help="LO,HI: lengths uniform in [LO, HI], seed 0 (default 32,512)")
    n.add_argument("--bert-repeats", type=int, default=None, help="timed runs, median (default 20)")
    n.add_argument("--longctx-ctx", type=int, default=None, help="decode context (default 16384)")
    n.add_argument("--longctx-new", type=int, default=None, help="new tokens per timed generate (default 32)")
    n.add_argument("--longctx-layers", type=int, default=None, help="layers of the 768-wide model (default 2)")
    n.add_argument("--no-longctx-fp32", action="store_true", help="skip eetjit's own fp32 session in longctx")
    n.add_argument("--wide-hidden", type=int, default=None, help="default 16384")
    n.add_argument("--wide-heads", type=int, default=None, help="default 128")
    n.add_argument("--wide-seq", type=int, default=None, help="tokens of the one run (batch 1; default 128)")
    n.add_argument("--chart-batches", default=None, help="default 1,8,32")
    n.add_argument("--chart-contexts", default=None, help="default 64,256,1024 (prompt clipped to n_positions - new)")
    n.add_argument("--chart-new", type=int, default=None, help="new tokens per generate (default 32)")
    n.add_argument("--chart-peers", default=None, help="comma list of hf, hf-static (default hf; hf-static compiles "
                   "per shape with torch.compile: minutes for 9 shapes)")
    n.add_argument("--chart-repeats", type=int, default=3)
    n.add_argument("--plot", type=Path, default=None, help="only render chart.png from a chart.json (or a "
                   "bench_more.json) and exit")
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--section-timeout", type=int, default=120, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.plot:
        data = json.loads(args.plot.read_text())
        data = data.get("sections", {}).get("chart", data)
        print(chart_markdown(data))
        print(plot_chart(data, args.plot.with_name("chart.png")))
        return 0
    args.sections = [x for s in args.sections.split(",") if s for x in GROUPS.get(s, (s,))]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}")
    if args.model is None:
        if args.tiny:
            args.model = ROOT / "graphs" / "gpt2-ts17-eager.onnx"
        elif {"memory", "prompt", "compile", "chart"} & set([args.section] if args.section else args.sections):
            ap.error("--model (the GPT-2 small export) is needed by memory, prompt, compile and chart")
    if args.section:
        return run_section(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
