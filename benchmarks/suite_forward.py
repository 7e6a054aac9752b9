"""`forward`: one forward pass of GPT-2 small and BERT-base (random weights), batch 1 and 4, sequence 128:
eetjit vs onnxruntime (same ONNX file) vs PyTorch eager through transformers (same weights); plus the cold
and warm compile time of GPT-2 small, each in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks import common as C
from benchmarks import peers as P

SEQ = 128
GOAL_VS_ORT = 0.8                    # eetjit latency <= 0.8x onnxruntime
GOAL_COLD_S, GOAL_WARM_S = 30.0, 3.0


def feeds_for(family: str, vocab: int, batch: int, rng) -> dict:
    """Random token ids (never all zeros), a full attention mask, and random token types for BERT."""
    ids = rng.integers(1, vocab, (batch, SEQ)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if family == "bert":
        feeds["token_type_ids"] = rng.integers(0, 2, (batch, SEQ)).astype(np.int64)
    return feeds


def bench_family(family: str, args, rng) -> list[dict]:
    path = C.model_path(family)
    C.log(f"[forward] {family}: compiling eetjit, loading onnxruntime and torch ...")
    sess, eet_compile_s = P.eetjit_session(path, args.device, max_batch=max(args.batches), max_seq_len=1024)
    ort_sess, ort_load = P.ort_session(path, args.device)
    model = C.torch_model(family)
    torch_run = P.torch_forward(model, args.device)
    vocab = sess.structure.vocab
    fusion = sess.fusion_report.to_dict() if sess.fusion_report is not None else None
    cases = []
    for batch in args.batches:
        feeds = feeds_for(family, vocab, batch, rng)
        eet_feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        ort_feeds = None
        if ort_sess is not None:
            ort_feeds = {k: v for k, v in feeds.items() if k in {i.name for i in ort_sess.get_inputs()}}
        # correctness first: the same numbers, or the timing means nothing
        y_eet = sess.run(None, eet_feeds)[0]
        y_torch = torch_run(feeds).float().cpu().numpy()
        check = {"max_abs_eetjit_vs_torch": float(np.max(np.abs(y_eet - y_torch)))}
        peers = {"eetjit": lambda: sess.run(None, eet_feeds)}
        if ort_sess is not None:
            y_ort = ort_sess.run(None, ort_feeds)[0]
            check["max_abs_eetjit_vs_ort"] = float(np.max(np.abs(y_eet - y_ort)))
            peers["onnxruntime"] = lambda: ort_sess.run(None, ort_feeds)
        peers["pytorch"] = lambda: torch_run(feeds)
        load0 = C.loadavg()
        C.log(f"[forward] {family} batch {batch}: timing {list(peers)} "
              f"({args.rounds} round(s) x {args.reps} reps, warmup {args.warmup}) ...")
        timings = C.measure_peers(peers, args.warmup, args.reps, args.rounds)
        case = {"model": family, "batch": batch, "seq": SEQ, "timings": timings, "check": check,
                "loadavg_before": load0, "loadavg_after": C.loadavg(), "busy_processes": C.busy_processes()}
        if not args.no_profile:
            case["eetjit_profile"] = P.profile_ops(sess, eet_feeds)
        cases.append(case)
    info = {"model": family, "path": str(path.relative_to(C.ROOT)), "eetjit_compile_in_process_s": eet_compile_s,
            "ort_session_s": ort_load if ort_sess is not None else None,
            "ort_skipped": None if ort_sess is not None else ort_load, "fusion": fusion}
    return cases, info


def compile_times(args) -> dict:
    """Cold then warm compile of GPT-2 small, each in a new process, sharing one fresh EETJIT_CACHE_DIR."""
    path = C.model_path("gpt2")
    out = {}
    with tempfile.TemporaryDirectory(prefix="eetjit-bench-cache-") as cache:
        env = dict(os.environ, EETJIT_CACHE_DIR=cache)
        env["PYTHONPATH"] = str(C.ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for which in ("cold", "warm"):
            C.log(f"[forward] compile time, {which} cache (subprocess) ...")
            load0 = C.wait_for_quiet()
            r = subprocess.run([sys.executable, "-m", "benchmarks.compile_probe", str(path), str(SEQ)],
                               capture_output=True, text=True, cwd=C.ROOT, env=env)
            if r.returncode != 0:
                out[which] = {"error": r.stderr.strip().splitlines()[-1:] or ["failed"]}
                continue
            out[which] = json.loads(r.stdout.strip().splitlines()[-1])
            out[which]["before"] = load0
    return out


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    cases, models = [], []
    for family in args.families:
        c, info = bench_family(family, args, rng)
        cases += c
        models.append(info)
    compile_ = None if args.no_compile else compile_times(args)
    return {"suite": "forward", "seq": SEQ, "goal": {"eetjit_over_ort": GOAL_VS_ORT, "cold_compile_s": GOAL_COLD_S,
                                                     "warm_compile_s": GOAL_WARM_S},
            "cases": cases, "models": models, "compile": compile_}


def report(data: dict) -> str:
    peers = [p for p in ("eetjit", "onnxruntime", "pytorch") if any(p in c["timings"] for c in data["cases"])]
    header = ["case"] + [f"{p} ms" for p in peers] + [f"eetjit/{p}" for p in peers[1:]] + ["n", "others busy"]
    rows = []
    for c in data["cases"]:
        t = c["timings"]
        e = t["eetjit"]["median"]
        rows.append([f"{c['model']} b{c['batch']} s{c['seq']}"]
                    + [C.fmt_ms(t[p]["median"]) if p in t else "-" for p in peers]
                    + [f"{e / t[p]['median']:.2f}x" if p in t else "-" for p in peers[1:]]
                    + [t["eetjit"]["n"], C.busiest(t)])
    lines = ["forward latency, median of n runs per peer (lower is better; goal eetjit/onnxruntime <= "
             f"{data['goal']['eetjit_over_ort']})", C.table(header, rows)]
    checks = ", ".join(f"{c['model']} b{c['batch']}: " + " ".join(f"{k.replace('max_abs_', '')}={v:.1e}"
                                                                  for k, v in c["check"].items())
                       for c in data["cases"])
    lines.append(f"max |difference| of outputs: {checks}")
    comp = data.get("compile")
    if comp:
        crow = []
        for which in ("cold", "warm"):
            r = comp.get(which, {})
            if "error" in r:
                crow.append([which, "error: " + " ".join(r["error"]), "", "", ""])
                continue
            goal = data["goal"][f"{which}_compile_s"]
            crow.append([which, f"{r['compile_s']:.1f}", f"{r['first_run_s']:.1f}", f"{r['total_s']:.1f}",
                         f"{goal:.0f}", str(r.get("kernel_cache"))])
        lines.append("GPT-2 small compile, fresh process each (seconds): compile = eetjit.compile(); first run = "
                     "first forward b1 s128 (lazy kernels + memory plan); total = process start to first result")
        lines.append(C.table(["cache", "compile s", "first run s", "total s", "goal s", "kernel cache"], crow))
    return "\n".join(lines)


def chart(data: dict):
    plt = C.pyplot()
    peers = [p for p in ("eetjit", "onnxruntime", "pytorch") if any(p in c["timings"] for c in data["cases"])]
    cases = data["cases"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(peers)
    colors = {"eetjit": "#d62728", "onnxruntime": "#1f77b4", "pytorch": "#7f7f7f"}
    for i, p in enumerate(peers):
        xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(cases))]
        ys = [c["timings"][p]["median"] * 1e3 if p in c["timings"] else 0 for c in cases]
        bars = ax.bar(xs, ys, width, label=p, color=colors.get(p))
        if p != "eetjit":
            continue
        for x, c, y in zip(xs, cases, ys):
            if "onnxruntime" in c["timings"]:
                ax.annotate(f"{c['timings']['eetjit']['median'] / c['timings']['onnxruntime']['median']:.2f}x ORT",
                            (x, y), ha="center", va="bottom", fontsize=7)
        del bars
    ax.set_xticks(range(len(cases)), [f"{c['model']}\nbatch {c['batch']}" for c in cases])
    ax.set_ylabel("forward latency, ms (median)")
    ax.set_title(f"forward, seq {data['seq']} — {data['env']['machine']}, {data['env']['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
