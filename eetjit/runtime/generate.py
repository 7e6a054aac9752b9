"""Pre-padding generation (EET): one prompt pass for the left-padded batch, then one-token decode steps.

The KV caches are allocated once per session for (max_batch, max_seq_len) and written in place by the
attention kernels; a batch uses the first B rows. Per-sequence state is only `pad[b]` (pad count) — no mask.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from eetjit.errors import InputError
from eetjit.plan.generation import POSITIONS, START, STEP, cache_names, specialize_for_generation
from eetjit.plan.norm_linear import fold_norm_linear, fold_producer_linear
from eetjit.runtime.sampling import check_sampling_args, select


class Generator:
    def __init__(self, session):
        s = session.structure
        self.session = session
        self.structure = s
        self.gen = specialize_for_generation(session.graph, s)
        if getattr(session.backend, "fold_norm_linear", False):
            fold_norm_linear(self.gen.graph)      # the backend computes a norm inside the GEMM that reads it
        if getattr(session.backend, "fold_producer_linear", False):
            fold_producer_linear(self.gen.graph)  # ... with its statistics from the GEMM that made its input
        self.plan = session._make_plan(self.gen.graph)
        dtype = session.backend.cache_dtype
        self.caches: dict[str, np.ndarray] = {}
        for i, layer in enumerate(s.layers):
            for name in cache_names(i):
                self.caches[name] = session.backend.zeros(
                    (session.max_batch, layer.kv_num_heads, session.max_seq_len, layer.head_dim), dtype)

    # --- argument checks -------------------------------------------------------------------------------
    def _check(self, prompts, max_new_tokens, eos_token_id):
        sess, s = self.session, self.structure
        if isinstance(prompts, np.ndarray):
            prompts = prompts.tolist()
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InputError("prompts must be a non-empty list of lists of token ids")
        if all(isinstance(t, (int, np.integer)) for t in prompts):
            prompts = [prompts]  # one prompt given as a flat list
        out = []
        for b, p in enumerate(prompts):
            if isinstance(p, np.ndarray):
                p = p.tolist()
            if not isinstance(p, (list, tuple)) or not p:
                raise InputError(f"prompt {b} is empty; every prompt needs at least one token id")
            if not all(isinstance(t, (int, np.integer)) for t in p):
                raise InputError(f"prompt {b} holds non-integer token ids")
            bad = [int(t) for t in p if not 0 <= int(t) < s.vocab]
            if bad:
                raise InputError(f"prompt {b}: token id(s) {bad[:5]} out of the vocabulary [0, {s.vocab})")
            out.append([int(t) for t in p])
        if len(out) > sess.max_batch:
            raise InputError(f"batch of {len(out)} prompts is over max_batch={sess.max_batch} "
                             "(set it in eetjit.compile)")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        P = max(len(p) for p in out)
        if P + max_new_tokens > sess.max_seq_len:
            raise InputError(f"longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) = "
                             f"{P + max_new_tokens} is over the cache's max_seq_len={sess.max_seq_len}")
        longest_real = max(len(p) for p in out) + max_new_tokens
        if s.max_positions is not None and longest_real > s.max_positions:
            raise InputError(f"a sequence would reach position {longest_real - 1}, over the model's "
                             f"{s.max_positions} learned positions")
        if eos_token_id is not None:
            ids = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
            if not all(isinstance(t, (int, np.integer)) and 0 <= t < s.vocab for t in ids):
                raise InputError(f"eos_token_id {eos_token_id!r} is not a token id in [0, {s.vocab})")
        return out

    def _prepare(self, prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos_token_id):
        """Checked prompts, eos set, rng, and the pre-padded batch: B, P, pad[B], ids[B, P], positions[B, P]."""
        prompts = self._check(prompts, max_new_tokens, eos_token_id)
        check_sampling_args(do_sample, temperature, top_k, top_p)
        eos = set() if eos_token_id is None else set(
            eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
        rng = np.random.default_rng(seed)
        B = len(prompts)
        P = max(len(p) for p in prompts)
        pad = np.array([P - len(p) for p in prompts], np.int64)        # the only padding state
        ids = np.zeros((B, P), np.int64)
        for b, p in enumerate(prompts):
            ids[b, pad[b]:] = p
        positions = np.maximum(np.arange(P)[None, :] - pad[:, None], 0).astype(np.int64)
        return prompts, eos, rng, B, P, pad, ids, positions

    @staticmethod
    def _report(tokens, finished: np.ndarray, eos: set) -> list:
        """A step's new token per row (None for rows finished before it); rows whose token is an eos finish."""
        out = [None if finished[b] else int(tokens[b]) for b in range(len(finished))]
        for b, t in enumerate(out):
            if t is not None and t in eos:
                finished[b] = True
        return out

    # --- the loop -----------------------------------------------------------------------------------------
    def stream(self, prompts, max_new_tokens=32, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               eos_token_id=None) -> Iterator[list]:
        prompts, eos, rng, B, P, pad, ids, positions = self._prepare(
            prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos_token_id)
        caches = {k: v[:B] for k, v in self.caches.items()}
        finished = np.zeros(B, bool)
        step = 0
        while True:
            feeds = {self.gen.input_ids: ids, POSITIONS: positions, START: pad,
                     STEP: np.array([P + step - 1 if step else 0], np.int64), **caches}
            (logits,) = self.plan.run(feeds)
            tokens = select(logits[:, -1, :], do_sample, temperature, top_k, top_p, rng)
            yield self._report(tokens, finished, eos)
            step += 1
            if step >= max_new_tokens or finished.all():
                return
            ids = tokens[:, None].astype(np.int64)
            positions = (P + step - 1 - pad)[:, None].astype(np.int64)

    def generate(self, prompts, stream=False, **kw):
        if stream:
            return self.stream(prompts, **kw)
        prompts_checked = self._check(prompts, kw.get("max_new_tokens", 32), kw.get("eos_token_id"))
        seqs = [list(p) for p in prompts_checked]
        for toks in self.stream(prompts_checked, **kw):
            for b, t in enumerate(toks):
                if t is not None:
                    seqs[b].append(t)
        return seqs
