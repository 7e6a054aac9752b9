"""The peers, each behind the same tiny interface: a callable that runs one forward pass on fixed feeds."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np


def eetjit_session(path, device: str, max_batch: int, max_seq_len: int = 1024, dtype: str = "float32"):
    import eetjit
    t = time.perf_counter()
    sess = eetjit.compile(str(path), device=device, dtype=dtype, max_batch=max_batch, max_seq_len=max_seq_len,
                          verbose=False)
    return sess, time.perf_counter() - t


def ort_session(path, device: str):
    """onnxruntime on the same file, default graph optimizations (ORT_ENABLE_ALL) and thread settings."""
    import onnxruntime as ort
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None, "onnxruntime has no CUDAExecutionProvider here"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    t = time.perf_counter()
    sess = ort.InferenceSession(str(path), providers=providers)
    return sess, time.perf_counter() - t


def torch_forward(model, device: str):
    """model(**feeds) under inference_mode, synchronized on CUDA; returns the first output as NumPy."""
    import torch
    model = model.to(device)

    def run(feeds):
        with torch.inference_mode():
            t = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
            out = model(**t, use_cache=False)
            y = out.logits if hasattr(out, "logits") else out.last_hidden_state
            if device == "cuda":
                torch.cuda.synchronize()
            return y
    return run


def profile_ops(sess, feeds: dict, reps: int = 3) -> dict:
    """Where an eetjit forward pass spends its time: seconds per run by op type (kernel ops vs fallback ops
    left in the graph), and the plan's own overhead (total minus the ops). Wraps each prepared op's callable
    for the duration; the suite's timed runs are made without it."""
    plan = sess.plan
    per_type = defaultdict(float)
    calls = defaultdict(int)
    saved = [op._run for op in plan.ops]
    try:
        for op in plan.ops:
            kind = ("fallback " if op.fallback else "") + (op.node.domain + "." if op.node.domain else "") + \
                op.node.op_type
            if op.node.op_type == "Linear":
                kind += f"[{op.node.attrs.get('activation', 'none')}]"

            def timed(inputs, out, _run=op._run, _kind=kind):
                t = time.perf_counter()
                r = _run(inputs, out)
                per_type[_kind] += time.perf_counter() - t
                calls[_kind] += 1
                return r
            op._run = timed
        sess.run(None, feeds)           # warm (the wrapper's own first call)
        per_type.clear()
        calls.clear()
        totals = []
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, feeds)
            totals.append(time.perf_counter() - t)
    finally:
        for op, r in zip(plan.ops, saved):
            op._run = r
    total = float(np.median(totals))
    ops = {k: {"seconds": v / reps, "calls": calls[k] // reps} for k, v in
           sorted(per_type.items(), key=lambda kv: -kv[1])}
    in_ops = sum(v["seconds"] for v in ops.values())
    return {"total_s": total, "ops": ops, "outside_ops_s": max(0.0, total - in_ops),
            "nodes": len(plan.ops), "fallback_nodes": sum(op.fallback for op in plan.ops)}
