"""Token selection from one step's logits: greedy, temperature, top-k, top-p, seeded (host side, NumPy).

The warpers apply in Hugging Face's order (temperature, top-k, top-p) so the same settings mean the same
distribution; the random stream is our own (numpy PCG64 from `seed`), so sampled tokens are reproducible
for a seed but not equal to PyTorch's.
"""
from __future__ import annotations

import numpy as np

from eetjit.errors import InputError


def check_sampling_args(do_sample, temperature, top_k, top_p) -> None:
    if not do_sample:
        return
    if not (isinstance(temperature, (int, float)) and temperature > 0 and np.isfinite(temperature)):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise InputError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")


def select(logits_BV: np.ndarray, do_sample: bool, temperature: float, top_k: int, top_p: float,
           rng: np.random.Generator) -> np.ndarray:
    """One token id per row of `logits_BV`."""
    logits = logits_BV.astype(np.float64)
    if not do_sample:
        return logits.argmax(-1).astype(np.int64)
    logits = logits / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k][:, None]   # the k-th largest per row
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(logits, order, -1)
        p = np.exp(sorted_logits - sorted_logits[:, :1])
        p /= p.sum(-1, keepdims=True)
        before = np.cumsum(p, -1) - p                   # mass of the strictly more likely tokens
        drop_sorted = before >= top_p                   # the smallest set reaching top_p is kept (>= 1 token)
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        logits = np.where(drop, -np.inf, logits)
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    return np.minimum((np.cumsum(p, -1) < u).sum(-1), V - 1).astype(np.int64)
