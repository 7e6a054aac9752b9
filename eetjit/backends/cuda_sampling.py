"""Sampling on the device: temperature, top-k and top-p (nucleus) over a step's logits without copying them to the
host (templates/cuda/sample.py.j2), and the NumPy reference it is tested against.

    sample_tokens(backend, logits, tokens_B, uniforms_B, temperature, top_k, top_p)

One block per row: the row maximum, then the top-k and top-p thresholds by bisection over the float32 order (each
round a block-reduced count or softmax mass, at most 32 rounds per threshold, no sort and no cap on V), then a
block scan of the kept masses against u * total. The random numbers come from the caller, one per row
(`uniforms_B`, float32 in [0, 1), drawn from the generator's seeded NumPy stream and copied in: B floats a step).

Semantics (those of eetjit.runtime.sampling.select, spelled out in `reference_sample`): x = logits / temperature;
top_k > 0 keeps x >= the k-th largest x (ties at the k-th are kept); top_p < 1 then keeps every x whose strictly
larger kept tokens hold less than top_p of the kept softmax mass; the token is the first kept index (vocabulary
order) whose cumulative kept mass reaches u * (the kept mass). Differences from `select`: equal logits at the
top-p boundary are kept or dropped together (select's stable sort keeps the lower indices of a tie first), and
the device computes in float32 (select in float64), which can move a pick only where a threshold or u * total
falls within rounding of a cumulative mass.

The temperature, top_k and top_p are launch arguments: a CUDA graph that captures this launch bakes them in.
"""
from __future__ import annotations

import numpy as np

from eetjit.backends.cuda_device import stream_context

# threads per block (one block per row); the simulator runs each thread as a Python thread
SAMPLE_THREADS = {"gpu": 512, "sim": 8}


def sample_tokens(backend, logits, tokens_B, uniforms_B, temperature, top_k, top_p, ids_B1=None, positions_B1=None,
                  step_1=None) -> None:
    """tokens_B[b] = a token sampled from row b of `logits` ([B, V] or [B, 1, V], the backend's dtype) with the
    uniform number uniforms_B[b] (float32 device array). With ids_B1 given, also ids[b, 0] = token; with
    positions_B1 and step_1 too, positions += 1 and step += 1 (the next decode step's inputs, on the device)."""
    B = logits.shape[0]
    logits_BV = logits.reshape(B, logits.shape[-1])
    has_ids = ids_B1 is not None
    advance = has_ids and positions_B1 is not None and step_1 is not None
    if (positions_B1 is not None or step_1 is not None) and not advance:
        raise ValueError("positions_B1 and step_1 are advanced together, with ids_B1")
    threads = SAMPLE_THREADS[backend.mode]
    kern = backend.kernel("sample", threads=threads, has_ids=has_ids, advance=advance)
    dummy = backend._dummy_idx()       # never touched by the kernel
    if not has_ids:
        ids_B1 = dummy
    if not advance:
        positions_B1, step_1 = dummy, dummy.reshape(1)
    k = int(top_k) if top_k else 0
    with stream_context(backend.dev):
        backend.dev.launch(kern, B, threads, logits_BV, uniforms_B, np.float32(temperature), np.int64(k),
                           np.float32(top_p), tokens_B, ids_B1, positions_B1, step_1)


def reference_sample(logits, u, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The token per row that sample_tokens picks, in NumPy (float64): logits [B, V] (or [B, 1, V]), u [B]."""
    x = np.asarray(logits, np.float64)
    x = x.reshape(x.shape[0], x.shape[-1]) / float(temperature)
    u = np.asarray(u, np.float64).reshape(-1)
    B, V = x.shape
    out = np.zeros(B, np.int64)
    for b in range(B):
        xb = x[b]
        keep = np.ones(V, bool)
        if 0 < top_k < V:
            keep &= xb >= np.partition(xb, V - top_k)[V - top_k]      # the k-th largest; ties kept
        e = np.where(keep, np.exp(xb - xb.max()), 0.0)
        if top_p < 1.0:
            # mass of the strictly larger kept tokens, per token: sort once, sum over groups of equal values
            order = np.argsort(-xb, kind="stable")
            xs, es = xb[order], e[order]
            before = np.cumsum(es) - es
            first_of_value = np.searchsorted(-xs, -xs, side="left")    # start of each run of equal values
            strictly = np.empty(V)
            strictly[order] = before[first_of_value]
            keep &= strictly < top_p * e.sum()
            e = np.where(keep, e, 0.0)
        c = np.cumsum(e)
        hit = np.flatnonzero(keep & (c >= u[b] * c[-1]))
        out[b] = hit[0] if hit.size else np.flatnonzero(keep)[-1]
    return out
