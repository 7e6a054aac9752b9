"""CUDA graphs for generation: the decode step of one batch size, captured once and replayed per token.

A decode step is the ExecutionPlan of the generation graph (eetjit.plan.generation) run for one token per
sequence, followed by the greedy tail (argmax of the logits, then the next step's inputs advanced on the device:
ids <- token, positions += 1, step += 1). `DecodeStep` fixes everything it touches:
- its per-step inputs live in device buffers it owns (ids [B, 1], positions [B, 1], start [B], step [1]); the
  kernels read them from device memory at run time, so the recorded launches stay valid from token to token;
- the KV caches are the session's (views [:B], fixed addresses);
- every op output is allocated once, by an eager warm-up run (which also compiles the kernels and plans the
  cuBLASLt GEMMs), and handed back to the op as `out=` ever after; op scratch and GEMM plans made during the
  warm-up are kept with the step (Device.keep), so eviction elsewhere cannot free what the graph points to.
The second run executes the step eagerly on those buffers and then captures the same launches (CuPy stream
capture: Numba kernels on the external stream, nvmath GEMMs on the same stream); every later run is one graph
launch. Plain ONNX ops left in the graph (shape
plumbing of TorchScript exports) run on the host at capture time only: their results are fixed for a batch size.

What stays eager: the prompt pass (its shapes change with every batch of prompts), sampling with temperature /
top-k / top-p (on the device, eetjit.backends.cuda_sampling, after the step: it overwrites the tokens and the ids
buffer; only B uniform numbers go up and B tokens come back), and everything when EETJIT_CUDA_GRAPHS=0 (debug:
the same fixed buffers, launched one by one) or under the CUDA simulator, which cannot capture. A step whose
capture fails (an op that needs the host) stays eager.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Iterator

import numpy as np

from eetjit.backends.cuda_device import CaptureError
from eetjit.backends.cuda_sampling import sample_tokens
from eetjit.plan.generation import POSITIONS, START, STEP
from eetjit.runtime.generate import Generator

GRAPHS_ENV = "EETJIT_CUDA_GRAPHS"    # "0": never capture (launch the decode step op by op)
MAX_DECODE_STEPS = 4                 # batch sizes whose decode step (buffers + graph) a generator keeps


def graphs_enabled() -> bool:
    return os.environ.get(GRAPHS_ENV, "1").strip() not in ("0", "false", "no", "off")


class DecodeStep:
    """One-token decode of B sequences on fixed device buffers; `run()` returns the logits buffer [B, 1, V]
    and leaves the greedy tokens in `tokens` (and the advanced inputs in ids / positions / step)."""

    def __init__(self, plan, backend, input_ids: str, batch: int, caches: dict):
        self.plan, self.backend, self.dev = plan, backend, backend.dev
        B = batch
        self.ids = backend.zeros((B, 1), np.int64)
        self.positions = backend.zeros((B, 1), np.int64)
        self.start = backend.zeros((B,), np.int64)
        self.step = backend.zeros((1,), np.int64)
        self.tokens = backend.zeros((B,), np.int64)
        feeds = {input_ids: self.ids, POSITIONS: self.positions, START: self.start, STEP: self.step, **caches}
        missing = [name for name, _ in plan.input_slots if name not in feeds]
        if missing:
            raise KeyError(f"decode step has no buffer for input(s) {missing}")
        self._env0: list = [None] * plan.n_slots
        for s, arr in plan.consts:
            self._env0[s] = arr
        for name, s in plan.input_slots:
            self._env0[s] = feeds[name]
        self.bufs: list | None = None      # per op: its output buffers (None for plain ONNX ops)
        self.keep: list = []               # scratch and GEMM plans the launches rely on
        self.env: list | None = None       # the last run's values (the graph reads them)
        self.graph = None
        self.capture_failed: str | None = None
        self.runs = 0

    @property
    def logits(self):
        return self.env[self.plan.output_slots[0]]

    def run(self):
        """One decode step. 1st call: eager warm-up (allocates); later calls: eager on the fixed buffers, and the
        2nd call also captures them (graphs enabled, GPU), after which every call is one graph replay."""
        self.runs += 1
        if self.graph is not None:
            self.dev.replay(self.graph)
            return self.logits
        if self.bufs is None:
            self._collecting(lambda: self._execute(None))
            return self.logits
        # This step runs eagerly on the fixed buffers (which also brings back any op scratch evicted since the
        # warm-up, e.g. by prompt passes of other shapes); then, once, the same launches are captured.
        self._collecting(lambda: self._execute(self.bufs))
        if graphs_enabled() and not self.dev.simulated and self.capture_failed is None:
            env = self.env
            try:
                self.graph = self._collecting(lambda: self.dev.capture(lambda: self._execute(self.bufs)))
            except CaptureError as e:
                self.capture_failed = str(e)
                self.env = env
                warnings.warn(f"eetjit: the decode step could not be captured as a CUDA graph ({e}); it runs "
                              "op by op", RuntimeWarning, stacklevel=2)
        return self.logits

    def profile(self, repeats: int = 20) -> list[tuple[str, str, float]]:
        """(op type, node name, device ms) for every op of the step and the greedy tail, measured by capturing
        each alone as a graph and replaying it `repeats` times between CUDA events (GPU only; after a run).
        The step's inputs are restored afterwards (the ops and the tail write the same cache column again)."""
        import cupy
        if self.dev.simulated or self.bufs is None:
            raise RuntimeError("profile() needs a GPU and a decode step that has run")
        saved = [self.dev.to_host(a).copy() for a in (self.ids, self.positions, self.step)]
        env, rows = self.env, []
        items = [(op.node.op_type, op.node.name,
                  lambda op=op, ins=ins, i=i: op([None if s is None else env[s] for s in ins], self.bufs[i]))
                 for i, (op, (ins, _)) in enumerate(zip(self.plan.ops, self.plan.steps)) if not op.fallback]
        items.append(("greedy", "argmax+advance", lambda: self.backend.greedy_tokens(
            self.logits, self.tokens, self.ids, self.positions, self.step)))
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        for kind, name, fn in items:
            self._collecting(fn)                  # eagerly first: scratch evicted since the warm-up comes back
            graph = self._collecting(lambda fn=fn: self.dev.capture(fn))
            self.dev.replay(graph)
            start.record(self.dev.stream)
            for _ in range(repeats):
                self.dev.replay(graph)
            end.record(self.dev.stream)
            end.synchronize()
            rows.append((kind, name, cupy.cuda.get_elapsed_time(start, end) / repeats))
        for a, h in zip((self.ids, self.positions, self.step), saved):
            self.dev.set(a, h)
        return rows

    def _collecting(self, fn):
        previous, self.dev.collecting = self.dev.collecting, self.keep
        try:
            return fn()
        finally:
            self.dev.collecting = previous

    def _execute(self, bufs):
        plan = self.plan
        env = list(self._env0)
        record = bufs is None
        if record:
            bufs = [None] * len(plan.ops)
        for i, (op, (ins, outs)) in enumerate(zip(plan.ops, plan.steps)):
            results = op([None if s is None else env[s] for s in ins], bufs[i])
            for s, r in zip(outs, results):
                env[s] = r
            if record and not op.fallback:
                bufs[i] = list(results)
        self.env = env
        if record:
            self.bufs = bufs
        self.backend.greedy_tokens(env[plan.output_slots[0]], self.tokens, self.ids, self.positions, self.step)


class CudaGenerator(Generator):
    """Generator for device="cuda": the prompt pass runs eagerly through the plan, the decode steps through a
    DecodeStep per batch size (captured as a CUDA graph), tokens are picked on the device (greedy or sampled)."""

    def __init__(self, session):
        super().__init__(session)
        self.backend = session.backend
        self.steps: OrderedDict[int, DecodeStep] = OrderedDict()

    def decode_step(self, B: int) -> DecodeStep:
        step = self.steps.get(B)
        if step is None:
            caches = {k: v[:B] for k, v in self.caches.items()}
            step = self.steps[B] = DecodeStep(self.plan, self.backend, self.gen.input_ids, B, caches)
            if len(self.steps) > MAX_DECODE_STEPS:
                self.steps.popitem(last=False)
        else:
            self.steps.move_to_end(B)
        return step

    def stream(self, prompts, max_new_tokens=32, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               eos_token_id=None) -> Iterator[list]:
        prompts, eos, rng, B, P, pad, ids, positions = self._prepare(
            prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos_token_id)
        backend, dev = self.backend, self.backend.dev
        caches = {k: v[:B] for k, v in self.caches.items()}
        # pad counts go up once (each layer would otherwise copy them from pageable memory, waiting every time for
        # the work queued before); the step stays on the host (the prompt attention sizes its GEMMs from it)
        feeds = {self.gen.input_ids: ids, POSITIONS: positions, START: dev.upload(pad, np.int64),
                 STEP: np.array([0], np.int64), **caches}
        (logits,) = self.plan.run(feeds)                               # the prompt pass (eager)
        step = self.decode_step(B)
        dev.set(step.start, pad)
        dev.set(step.positions, (P - 1 - pad)[:, None])               # the tail advances them to the 1st step's
        dev.set(step.step, [P - 1])
        backend.greedy_tokens(logits, step.tokens, step.ids, step.positions, step.step)
        finished = np.zeros(B, bool)
        produced = 0
        uniforms = backend.zeros((B,), np.float32) if do_sample else None
        while True:
            if do_sample:
                # On the device: one uniform number per row from the seeded stream (the same draws as the host's
                # `select`), the token into step.tokens and the next step's ids; the greedy tail of the step has
                # already advanced positions and step.
                dev.set(uniforms, rng.random(B))
                sample_tokens(backend, logits, step.tokens, uniforms, temperature, top_k, top_p, ids_B1=step.ids)
            tokens = backend.to_host(step.tokens)
            yield [None if finished[b] else int(tokens[b]) for b in range(B)]
            for b in range(B):
                if not finished[b] and int(tokens[b]) in eos:
                    finished[b] = True
            produced += 1
            if produced >= max_new_tokens or finished.all():
                return
            logits = step.run()
