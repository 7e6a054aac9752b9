"""`generate`: greedy generation with GPT-2 small (random weights), batch 1 and 8, prompts of up to 32 tokens
(left-padded), 32 new tokens: eetjit's pre-padding generation over its KV cache vs Hugging Face `generate` with
PyTorch (same weights, left padding + attention mask, its default KV cache). Also eetjit's prompt pass and
per-step decode time, measured separately (streaming).

eetjit runs once per `--dtypes` entry: float32; float16, which on the CPU stores the GEMM weights in 16 bits
(activations float32); bfloat16, whose GEMM inputs are bfloat16 too (AVX512-BF16 dot products, float32 sums).
HF runs in float32 (`--hf-attn`) and, as its fastest CPU setting here, in bfloat16 (`--hf-bf16`). Greedy tokens
are checked: float32 eetjit against float32 HF; a 16-bit eetjit session against HF float32 with its GEMMs
rounded the same way (graphs/export.py `round_gemm_weights`)."""
from __future__ import annotations

import time

import numpy as np

from benchmarks import common as C
from benchmarks import peers as P

PROMPT, NEW = 32, 32
GOAL_VS_HF = 3.0                    # eetjit tokens/s >= 3x Hugging Face
HF_ATTNS = ("sdpa", "eager")        # sdpa is transformers' default; eager is what the ONNX file was exported with


def prompt_lengths(batch: int) -> list[int]:
    """32 for the first prompt, the others between 25 and 32: a ragged, left-padded batch of width 32."""
    return [PROMPT - (b * 5) % 8 for b in range(batch)]


def make_prompts(batch: int, vocab: int, rng) -> list[list[int]]:
    return [rng.integers(1, vocab - 1, n).tolist() for n in prompt_lengths(batch)]


def hf_generate(model, prompts: list[list[int]], pad_id: int, device: str):
    """HF generate, greedy, exactly NEW tokens (no early stop), left padding + attention mask."""
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    model.generation_config.eos_token_id = None      # never stop early: every peer makes B * NEW tokens

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                                 do_sample=False, pad_token_id=pad_id, use_cache=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return run, width


def eetjit_steps(sess, prompts, reps: int) -> dict:
    """Per-step seconds of eetjit's streaming generation: step 0 = the prompt pass (+ its token's selection),
    steps 1.. = one-token decode steps."""
    first, decode = [], []
    per_step = []
    for _ in range(reps):
        times = []
        t = time.perf_counter()
        for _tokens in sess.generate(prompts, max_new_tokens=NEW, stream=True):
            now = time.perf_counter()
            times.append(now - t)
            t = now
        first.append(times[0])
        decode += times[1:]
        per_step.append(times)
    steps = np.median(np.array(per_step), axis=0)
    return {"prompt_pass_s": float(np.median(first)), "decode_step_s": float(np.median(decode)),
            "decode_step_first_s": float(steps[1]), "decode_step_last_s": float(steps[-1]),
            "median_per_step_s": steps.tolist(), "n": reps}


def eetjit_name(dtype: str) -> str:
    return f"eetjit-{dtype}"


def run(args) -> dict:
    import torch
    rng = np.random.default_rng(args.seed)
    path = C.model_path("gpt2")
    dtypes = getattr(args, "dtypes", None) or ["float32"]
    C.log(f"[generate] compiling eetjit ({', '.join(dtypes)}), building the Hugging Face models ...")
    sessions, compile_s = {}, {}
    for d in dtypes:
        sessions[d], compile_s[d] = P.eetjit_session(path, args.device, max_batch=max(args.batches),
                                                     max_seq_len=1024, dtype=d)
    vocab = sessions[dtypes[0]].structure.vocab
    models = {f"hf-{a}": C.torch_model("gpt2", a).to(args.device) for a in args.hf_attn}
    for a in getattr(args, "hf_bf16", []):
        models[f"hf-{a}-bf16"] = C.torch_model("gpt2", a).to(args.device, torch.bfloat16)
    # the weights a 16-bit eetjit session computes with, in a float32 HF model: its greedy tokens must be equal
    rounded = {d: C.export_module().round_gemm_weights(C.torch_model("gpt2", "sdpa"), d).to(args.device)
               for d in dtypes if d != "float32"}
    pad_id = 50256
    cases = []
    for batch in args.batches:
        prompts = make_prompts(batch, vocab, rng)
        runners = {}
        for name, m in models.items():
            runners[name], width = hf_generate(m, prompts, pad_id, args.device)
        check = {"tokens_total": batch * NEW}
        for d, sess in sessions.items():
            mine = [s[len(p):] for s, p in zip(sess.generate(prompts, max_new_tokens=NEW), prompts)]
            refs = {n: fn for n, fn in runners.items() if not n.endswith("-bf16")} if d == "float32" else \
                {f"hf-sdpa-{d}-weights": hf_generate(rounded[d], prompts, pad_id, args.device)[0]}
            for name, fn in refs.items():
                out = fn()
                theirs = [out[b, width:].tolist() for b in range(batch)]
                check[f"tokens_equal_{eetjit_name(d)}_vs_{name}"] = sum(
                    a == b for x, y in zip(mine, theirs) for a, b in zip(x, y))
        peers = {**{eetjit_name(d): (lambda s=s: s.generate(prompts, max_new_tokens=NEW))
                    for d, s in sessions.items()}, **runners}
        load0 = C.loadavg()
        C.log(f"[generate] batch {batch}: timing {list(peers)} ({args.rounds} round(s) x {args.reps} reps, "
              f"warmup {args.warmup}) ...")
        timings = C.measure_peers(peers, args.warmup, args.reps, args.rounds)
        for t in timings.values():
            t["tokens_per_s"] = batch * NEW / t["median"]
        steps = {}
        for d, sess in sessions.items():
            C.settle()
            quiet = C.wait_for_quiet()
            steps[eetjit_name(d)] = eetjit_steps(sess, prompts, max(3, args.reps))
            steps[eetjit_name(d)]["before"] = quiet
        cases.append({"model": "gpt2", "batch": batch, "prompt_lengths": [len(p) for p in prompts],
                      "new_tokens": NEW, "timings": timings, "eetjit_steps": steps, "check": check,
                      "loadavg_before": load0, "loadavg_after": C.loadavg(), "busy_processes": C.busy_processes()})
    return {"suite": "generate", "prompt": PROMPT, "new_tokens": NEW, "goal": {"eetjit_over_hf_tokens_per_s": GOAL_VS_HF},
            "eetjit_dtypes": dtypes, "eetjit_compile_in_process_s": compile_s, "cases": cases}


def report(data: dict) -> str:
    peers = list(data["cases"][0]["timings"]) if data["cases"] else []
    ours = [p for p in peers if p.startswith("eetjit")]
    hf = [p for p in peers if not p.startswith("eetjit")]
    header = (["case", "eetjit", "tok/s"] + [f"{p} tok/s" for p in hf] + [f"/ {p}" for p in hf]
              + ["prompt pass ms", "decode step ms", "n", "others busy"])
    rows = []
    for c in data["cases"]:
        t = c["timings"]
        for e in ours:
            st = c["eetjit_steps"][e]
            rows.append([f"gpt2 b{c['batch']} p{max(c['prompt_lengths'])}+{c['new_tokens']}", e.split("-", 1)[1],
                         f"{t[e]['tokens_per_s']:,.1f}"] + [f"{t[p]['tokens_per_s']:,.1f}" for p in hf]
                        + [f"{t[e]['tokens_per_s'] / t[p]['tokens_per_s']:.2f}x" for p in hf]
                        + [C.fmt_ms(st["prompt_pass_s"]), C.fmt_ms(st["decode_step_s"]), t[e]["n"], C.busiest(t)])
    lines = [f"greedy generation tokens/s (higher is better; goal eetjit >= {data['goal']['eetjit_over_hf_tokens_per_s']}x "
             "Hugging Face); '/ peer' = eetjit tok/s over the peer's; prompt pass / decode step: eetjit, streaming, "
             "median", C.table(header, rows)]
    for c in data["cases"]:
        ck = c["check"]
        eq = ", ".join(f"{k.replace('tokens_equal_', '')} {v}/{ck['tokens_total']}" for k, v in ck.items()
                       if k.startswith("tokens_equal_"))
        lines.append(f"batch {c['batch']}: greedy tokens equal: {eq}; total time medians (s): "
                     + ", ".join(f"{p} {c['timings'][p]['median']:.3f}" for p in peers))
    return "\n".join(lines)


def chart(data: dict):
    plt = C.pyplot()
    cases = data["cases"]
    peers = list(cases[0]["timings"])
    hf0 = next(p for p in peers if not p.startswith("eetjit"))
    colors = {"eetjit-float32": "#d62728", "eetjit-float16": "#ff7f0e", "eetjit-bfloat16": "#e377c2",
              "hf-sdpa": "#7f7f7f", "hf-eager": "#bcbcbc", "hf-sdpa-bf16": "#1f77b4"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(cases))]
        ys = [c["timings"][p]["tokens_per_s"] for c in cases]
        ax.bar(xs, ys, width, label=p, color=colors.get(p))
        if p.startswith("eetjit"):
            for x, c, y in zip(xs, cases, ys):
                ax.annotate(f"{y / c['timings'][hf0]['tokens_per_s']:.1f}x", (x, y), ha="center", va="bottom",
                            fontsize=7)
    ax.set_xticks(range(len(cases)), [f"batch {c['batch']}" for c in cases])
    ax.set_ylabel("new tokens / s (median)")
    ax.set_title(f"greedy, prompt {data['prompt']} + {data['new_tokens']} new (labels: x {hf0})", fontsize=9)
    ax.legend(fontsize=7)
    for c in cases:
        for e, st in c["eetjit_steps"].items():
            steps = np.array(st["median_per_step_s"]) * 1e3
            ax2.plot(range(1, len(steps)), steps[1:], marker=".", label=f"b{c['batch']} {e} decode")
    ax2.set_xlabel("step")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.set_title("eetjit decode step (median)", fontsize=9)
    ax2.legend(fontsize=6)
    fig.suptitle(f"generate, GPT-2 small — {data['env']['machine']}, {data['env']['date']}", fontsize=9)
    fig.tight_layout()
    return fig
