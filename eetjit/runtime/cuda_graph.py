"""CUDA graphs for generation: the decode step of one batch size and the prompt pass of one (batch, prompt length),
each captured once and replayed.

`CapturedPlan` runs the ExecutionPlan of the generation graph (eetjit.plan.generation) on fixed buffers:
- its per-run inputs live in device buffers it owns (decode: ids [B, 1], positions [B, 1], start [B], step [1];
  prompt: ids [B, P], positions [B, P], start [B]); the kernels read them from device memory at run time, so the
  recorded launches stay valid from run to run;
- the KV caches are the session's (views [:B], fixed addresses);
- every op output lives in the buffers of the plan's memory plan for that signature (reused by liveness), traced
  by the first, eager, run (which also compiles the kernels); graph outputs get a buffer of their own; op scratch
  and GEMM plans made on those buffers are kept with it (Device.keep), so eviction elsewhere cannot free what the
  graph points to.
The second run executes eagerly on those buffers and then captures the same launches (CuPy stream capture: Numba
kernels on the external stream, nvmath GEMMs on the same stream); every later run is one graph launch. Plain ONNX
ops left in the graph (shape plumbing of TorchScript exports) run on the host at capture time only: their results
are fixed for a signature. A decode step (`DecodeStep`) adds the greedy tail (argmax of the logits, then the next
step's inputs advanced on the device: ids <- token, positions += 1, step += 1) to its graph. A prompt pass
(`PromptPass`) of a shape seen only once never gets past the eager run; the prompt lengths of a serving load
repeat when the caller buckets them.

What stays eager: sampling with temperature / top-k / top-p (on the device, eetjit.backends.cuda_sampling, after
the step: it overwrites the tokens and the ids buffer; the uniform numbers of all steps go up once and B tokens
come back a step), and everything when EETJIT_CUDA_GRAPHS=0 (debug: the same fixed buffers, launched one by one)
or under the CUDA simulator, which cannot capture. A pass whose capture fails (an op that needs the host) stays
eager.

The generator's loop is pipelined: the next decode steps are queued behind the asynchronous copy of the last
tokens to the host before the host waits for that copy (`Device.to_host_async`), so the device does not idle while
the host reads tokens and yields them. With EETJIT_DECODE_STEPS=n (default 4), greedy steps go n at a time once
the step is captured (`DecodeStep.steps`: one graph of n steps, their tokens in the rows of one device array, one
copy), which spares the gaps between graph launches and the per-step copy.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Iterator

import numpy as np

from eetjit.backends.cuda_device import CaptureError
from eetjit.backends.cuda_sampling import sample_tokens
from eetjit.codegen import workers
from eetjit.plan.generation import POSITIONS, START, STEP
from eetjit.runtime.generate import Generator

GRAPHS_ENV = "EETJIT_CUDA_GRAPHS"    # "0": never capture (launch the decode step op by op)
# Greedy decode steps queued per graph launch (a graph of that many steps, each writing its tokens to a row of a
# device array copied to the host once). H200, GPT-2 small B1 x 64 (an experiment on the same capture, replays of
# 0.281 ms): the pipelined loop took 0.291 ms a step at 1, 0.283 at 4, 0.282 at 8; up to 2 x this many steps are
# wasted after an eos ends every row. Session 12, the built path (graph replay 0.228 ms): 0.244 -> 0.232 ms a
# step at 4; tests/cuda/test_cuda_generate.py checks its tokens on a GPU. EETJIT_DECODE_STEPS=1: a launch a step.
DECODE_STEPS_ENV = "EETJIT_DECODE_STEPS"
DECODE_STEPS = 4
MAX_DECODE_STEPS = 4                 # batch sizes whose decode step (buffers + graph) a generator keeps
MAX_PROMPT_PASSES = 4                # (batch, prompt length) shapes whose prompt pass a generator keeps


def decode_steps() -> int:
    """Greedy decode steps per graph launch (EETJIT_DECODE_STEPS, at least 1)."""
    text = os.environ.get(DECODE_STEPS_ENV, "")
    try:
        return max(1, int(text)) if text else DECODE_STEPS
    except ValueError:
        raise ValueError(f"{DECODE_STEPS_ENV}={text!r} is not a whole number of steps") from None


def graphs_enabled() -> bool:
    return os.environ.get(GRAPHS_ENV, "1").strip() not in ("0", "false", "no", "off")


class CapturedPlan:
    """An ExecutionPlan run over feeds that live in fixed device buffers, on the fixed buffers of its memory plan,
    and from the third run on replayed as one CUDA graph. Run 1 is the plan's own eager run (it traces the
    signature's memory plan, or reuses it); run 2 runs eagerly on that plan's buffers (graph outputs get a buffer
    of their own) and captures the same launches; later runs are one graph launch. `tail(outputs)` is work queued
    after the ops and captured with them (DecodeStep: the greedy tail). The caller writes new values into the
    feed buffers before each run."""

    def __init__(self, plan, backend, feeds: dict, what: str = "plan"):
        self.plan, self.backend, self.dev = plan, backend, backend.dev
        self.what = what
        missing = [name for name, _ in plan.input_slots if name not in feeds]
        if missing:
            raise KeyError(f"{what} has no buffer for input(s) {missing}")
        self.feeds = feeds
        self._env0: list = [None] * plan.n_slots
        for s, arr in plan.consts:
            self._env0[s] = arr
        for name, s in plan.input_slots:
            self._env0[s] = feeds[name]
        self.bufs: list | None = None      # per op: its output buffers (None for plain ONNX ops)
        self.keep: list = []               # scratch and GEMM plans the launches rely on
        self.outputs: list | None = None   # the graph's outputs of the last run (fixed buffers from run 2 on)
        self.env: list | None = None
        self.graph = None
        self.capture_failed: str | None = None
        self.runs = 0
        # Values that plain ONNX ops compute on the host (from constants and shapes: fixed for a signature) and
        # only kernel ops read, e.g. a slice of a position-id table: uploaded once, so no copy is captured.
        readers: dict[int, list[bool]] = {}
        for op, (ins, _) in zip(plan.ops, plan.steps):
            for sl in ins:
                if sl is not None:
                    readers.setdefault(sl, []).append(op.fallback)
        self._to_device = {sl for op, (_, outs) in zip(plan.ops, plan.steps) if op.fallback for sl in outs
                           if sl in readers and not any(readers[sl])}
        self._uploads: dict[int, tuple] = {}     # slot -> (host value, device copy)

    def tail(self, outputs) -> None:
        """Work after the ops, captured with them (nothing by default)."""

    def run(self, capture: bool = True) -> list:
        """One run (see the class); capture=False: never capture in this run."""
        self.runs += 1
        if self.graph is not None:
            self.dev.replay(self.graph)
            return self.outputs
        if self.bufs is None:
            arena = self.plan.arena(self.feeds)
            if arena is None:                  # a new signature: the plan's eager run traces its memory plan
                self.outputs = self.plan.run(self.feeds)
                self.tail(self.outputs)
                return self.outputs
            self.bufs = [None if b is None else list(b) for b in arena]
        # This run is eager on the fixed buffers (which also brings back any op scratch evicted since, e.g. by
        # passes of other shapes); then, once, the same launches are captured.
        self._collecting(lambda: self._execute(self.bufs))
        if capture and self.will_capture():
            outputs, env = self.outputs, self.env
            try:
                self.graph = self._collecting(lambda: self.dev.capture(lambda: self._execute(self.bufs)))
            except CaptureError as e:
                self.capture_failed = str(e)
                self.outputs, self.env = outputs, env
                warnings.warn(f"eetjit: the {self.what} could not be captured as a CUDA graph ({e}); it runs "
                              "op by op", RuntimeWarning, stacklevel=2)
            else:
                self.captured()
        return self.outputs

    def will_capture(self) -> bool:
        """Whether a run on the fixed buffers captures (or has captured) this plan as a graph."""
        return graphs_enabled() and not self.dev.simulated and self.capture_failed is None

    def captured(self) -> None:
        """Called right after the capture, while every op's scratch is the one the eager run just used."""

    def profile(self, repeats: int = 20) -> list[tuple[str, str, float]]:
        """(op type, node name, device ms) for every kernel op and the tail, measured by capturing each alone as
        a graph and replaying it `repeats` times between CUDA events (GPU only; after two runs; NaN for an op
        that cannot be captured). Ops that write in place (the KV cache) write the same values again;
        subclasses restore what their tail advances."""
        import cupy
        if self.dev.simulated or self.env is None:
            raise RuntimeError("profile() needs a GPU and two runs")
        env, rows = self.env, []
        items = [(op.node.op_type, op.node.name,
                  lambda op=op, ins=ins, i=i: op([None if s is None else env[s] for s in ins], self.bufs[i]))
                 for i, (op, (ins, _)) in enumerate(zip(self.plan.ops, self.plan.steps)) if not op.fallback]
        items.append(("tail", type(self).__name__, lambda: self.tail(self.outputs)))
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        for kind, name, fn in items:
            self._collecting(fn)                  # eagerly first: scratch evicted since the warm-up comes back
            try:
                graph = self._collecting(lambda fn=fn: self.dev.capture(fn))
            except CaptureError:                  # an op that needs the host (an upload): not timed alone
                rows.append((kind, name, float("nan")))
                continue
            self.dev.replay(graph)
            start.record(self.dev.stream)
            for _ in range(repeats):
                self.dev.replay(graph)
            end.record(self.dev.stream)
            end.synchronize()
            rows.append((kind, name, cupy.cuda.get_elapsed_time(start, end) / repeats))
        return rows

    def _device_copy(self, slot, value):
        """The device copy of a host-computed value (made on the first eager run; the same one ever after)."""
        if not isinstance(value, np.ndarray) or self.dev.simulated:
            return value
        hit = self._uploads.get(slot)
        if hit is not None:
            if hit[0].shape != value.shape or hit[0].dtype != value.dtype or not np.array_equal(hit[0], value):
                raise CaptureError(f"a value computed on the host changed between runs of one signature "
                                   f"(slot {slot})")
            return hit[1]
        copy = self.dev.upload(value)          # CaptureError while capturing
        self._uploads[slot] = (value.copy(), copy)
        self.dev.keep(copy)
        return copy

    def _collecting(self, fn):
        previous, self.dev.collecting = self.dev.collecting, self.keep
        try:
            return fn()
        finally:
            self.dev.collecting = previous

    def _execute(self, bufs):
        """Every op on `bufs`; an op output without a buffer (a graph output) gets the one this run made."""
        plan = self.plan
        env = list(self._env0)
        for i, (op, (ins, outs)) in enumerate(zip(plan.ops, plan.steps)):
            results = op([None if s is None else env[s] for s in ins], bufs[i])
            for s, r in zip(outs, results):
                env[s] = self._device_copy(s, r) if s in self._to_device else r
            if not op.fallback and bufs[i] is not None:
                for j, r in enumerate(results):
                    if bufs[i][j] is None:
                        bufs[i][j] = r
        self.env = env
        self.outputs = [env[s] for s in plan.output_slots]
        self.tail(self.outputs)


class DecodeStep(CapturedPlan):
    """One-token decode of B sequences on fixed device buffers; `run()` returns the logits buffer [B, 1, V]
    and leaves the greedy tokens in `tokens` (and the advanced inputs in ids / positions / step)."""

    def __init__(self, plan, backend, input_ids: str, batch: int, caches: dict):
        B = batch
        self.ids = backend.zeros((B, 1), np.int64)
        self.positions = backend.zeros((B, 1), np.int64)
        self.start = backend.zeros((B,), np.int64)
        self.step = backend.zeros((1,), np.int64)
        self.tokens = backend.zeros((B,), np.int64)
        self._tokens_out = self.tokens         # where the greedy tail writes (a row of a `steps` array there)
        # n -> (tokens [n, B], the graph of n steps captured with the step, or None: n eager runs, no graphs)
        self._blocks: dict[int, tuple] = {}
        feeds = {input_ids: self.ids, POSITIONS: self.positions, START: self.start, STEP: self.step, **caches}
        super().__init__(plan, backend, feeds, what="decode step")

    @property
    def logits(self):
        return self.outputs[0]

    def run(self):
        return super().run()[0]

    def tail(self, outputs) -> None:
        self.backend.greedy_tokens(outputs[0], self._tokens_out, self.ids, self.positions, self.step)

    def captured(self) -> None:
        """With EETJIT_DECODE_STEPS = n > 1, also capture n steps as one graph, each step's greedy tail writing its
        tokens to a row of one [n, B] array (now, while the ops' scratch is the eager run's: a later capture could
        meet scratch evicted by other shapes)."""
        n = decode_steps()
        if n < 2:
            return
        tokens = self.backend.zeros((n, self.tokens.shape[0]), np.int64)

        def body():
            for j in range(n):
                self._tokens_out = tokens[j]
                self._execute(self.bufs)
        try:
            graph = self._collecting(lambda: self.dev.capture(body))
        except CaptureError as e:
            warnings.warn(f"eetjit: {n} decode steps could not be captured as one CUDA graph ({e}); each step "
                          "runs as its own graph launch", RuntimeWarning, stacklevel=2)
            return
        finally:
            self._tokens_out = self.tokens
        self._blocks[n] = (tokens, graph)

    def can_run_many(self, n: int) -> bool:
        """Whether `steps(n)` may queue n steps now: once the step is a graph, where its n-step graph was captured
        with it; before, only where it never will be a graph (graphs off, the simulator, a failed capture): the
        capture records the tail's output buffer, so runs before it stay one by one."""
        if self.graph is not None:
            return self._blocks.get(n, (None, None))[1] is not None
        return not self.will_capture()

    def steps(self, n: int):
        """n greedy decode steps queued at once (can_run_many(n) first); returns the device array [n, B] of their
        tokens (row j: step j's): one launch of the n-step graph, or n eager runs where there are no graphs."""
        tokens, graph = self._blocks.get(n, (None, None))
        if graph is not None:
            self.runs += n
            self.dev.replay(graph)
            return tokens
        if tokens is None:
            tokens = self.backend.zeros((n, self.tokens.shape[0]), np.int64)
            self._blocks[n] = (tokens, None)
        for j in range(n):
            self._tokens_out = tokens[j]
            try:
                CapturedPlan.run(self, capture=False)
            finally:
                self._tokens_out = self.tokens
        return tokens

    def profile(self, repeats: int = 20) -> list[tuple[str, str, float]]:
        """CapturedPlan.profile with the step's inputs restored afterwards (the tail advances them)."""
        saved = [self.dev.to_host(a).copy() for a in (self.ids, self.positions, self.step)]
        rows = super().profile(repeats)
        for a, h in zip((self.ids, self.positions, self.step), saved):
            self.dev.set(a, h)
        return [("greedy", "argmax+advance", ms) if kind == "tail" else (kind, name, ms) for kind, name, ms in rows]


class PromptPass(CapturedPlan):
    """The prompt pass of B left-padded prompts of P tokens on fixed device buffers (ids, positions, pad counts);
    `run()` returns the logits buffer [B, 1, V]. Captured like a decode step from its second run of the same
    (B, P), so a repeated prompt shape costs one graph launch instead of a Python launch per kernel."""

    def __init__(self, plan, backend, input_ids: str, batch: int, length: int, caches: dict):
        B, P = batch, length
        self.ids = backend.zeros((B, P), np.int64)
        self.positions = backend.zeros((B, P), np.int64)
        self.start = backend.zeros((B,), np.int64)
        feeds = {input_ids: self.ids, POSITIONS: self.positions, START: self.start,
                 STEP: np.array([0], np.int64), **caches}
        super().__init__(plan, backend, feeds, what="prompt pass")

    def __call__(self, ids, positions, pad):
        for buf, host in ((self.ids, ids), (self.positions, positions), (self.start, pad)):
            self.dev.set(buf, host)
        return self.run()[0]


def _kept(table: OrderedDict, key, make, limit: int):
    """table[key], made by make() when missing; the table keeps the `limit` most recently used."""
    item = table.get(key)
    if item is None:
        item = table[key] = make()
        if len(table) > limit:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return item


class CapturedRuns:
    """Session.run on the CUDA backend: the first run of a (plan, input signature) is the plan's eager run (it
    traces the memory plan); from the second on, the feeds are copied into device buffers of that signature and the
    plan runs as a CapturedPlan (eager on fixed buffers once, then one graph launch per run). Outputs are the
    CapturedPlan's fixed buffers: the session copies them to the host before the next run."""

    MAX_PLANS = 4        # signatures kept (their staging buffers, outputs and graphs)

    def __init__(self, backend):
        self.backend = backend
        self.plans: OrderedDict = OrderedDict()

    def run(self, plan, feeds: dict, output_names=None) -> list:
        if plan.arena(feeds) is None:
            return plan.run(feeds, output_names)
        def make():
            staged = {name: self.backend.empty(np.shape(feeds[name]), feeds[name].dtype)
                      for name, _ in plan.input_slots}
            return CapturedPlan(plan, self.backend, staged, what="Session.run")
        key = (id(plan), plan._signature(feeds))
        if key in self.plans and self.plans[key].plan is not plan:      # an id reused by a newer plan
            del self.plans[key]
        cp = _kept(self.plans, key, make, self.MAX_PLANS)
        for name, buf in cp.feeds.items():
            self.backend.dev.set(buf, feeds[name])
        return plan.select(cp.run(), output_names)


class CudaGenerator(Generator):
    """Generator for device="cuda": the prompt pass through a PromptPass per (batch, prompt length), the decode
    steps through a DecodeStep per batch size (each captured as a CUDA graph once repeated), tokens picked on the
    device (greedy or sampled)."""

    def __init__(self, session):
        super().__init__(session)
        self.backend = session.backend
        self.steps: OrderedDict[int, DecodeStep] = OrderedDict()
        self.prompts: OrderedDict[tuple[int, int], PromptPass] = OrderedDict()
        self._dry_prompts: set = set()      # shapes dry_run has seen (a generate(1) never runs its decode step)
        self._dry_steps: set = set()

    def prompt_pass(self, B: int, P: int) -> PromptPass:
        return _kept(self.prompts, (B, P), lambda: PromptPass(self.plan, self.backend, self.gen.input_ids, B, P,
                                                              self._caches(B)), MAX_PROMPT_PASSES)

    def decode_step(self, B: int) -> DecodeStep:
        return _kept(self.steps, B, lambda: DecodeStep(self.plan, self.backend, self.gen.input_ids, B,
                                                       self._caches(B)), MAX_DECODE_STEPS)

    def _caches(self, B: int) -> dict:
        return {k: v[:B] for k, v in self.caches.items()}

    def dry_run(self, B: int, P: int) -> list:
        """The (kernel, argument types) pairs that the prompt pass of (B, P) and the decode step of B would
        compile, where either is new to this generator: both run with launches and GEMMs deferred (nothing
        computes; Device.deferring), and the memory plans those runs traced are forgotten, so the real runs
        behave as if this had not happened. Once per shape: [] when both were dry-run before, and when the dry
        run fails."""
        new_prompt, new_step = (B, P) not in self._dry_prompts, B not in self._dry_steps
        if not (new_prompt or new_step):
            return []
        self._dry_prompts.add((B, P))
        self._dry_steps.add(B)
        plan, dev = self.plan, self.backend.dev
        arenas = list(plan._arenas.items())        # restored after: the dry run's traces may evict older ones
        try:
            with dev.deferring() as recorded:
                if new_prompt:
                    plan.run(self.prompt_pass(B, P).feeds)
                if new_step:
                    step = self.decode_step(B)
                    (logits,) = plan.run(step.feeds)
                    self.backend.greedy_tokens(logits, step.tokens, step.ids, step.positions, step.step)
        except Exception:      # an op that needs real values: the real run compiles as it goes
            recorded = []
        plan._arenas.clear()
        plan._arenas.update(arenas)
        return recorded

    def compile_ahead(self, B: int, P: int) -> dict | None:
        """Before the first run of a new (B, P) prompt pass or B decode step on a GPU: compile the kernels they
        need and Numba's disk cache lacks in worker processes (eetjit.codegen.workers), side by side."""
        if self.backend.dev.simulated or workers.worker_count(workers.MAX_WORKERS) < 2:
            return None
        try:
            jobs = workers.pending_jobs(self.dry_run(B, P))
            n = workers.worker_count(len(jobs))
            return workers.compile_elsewhere(jobs, n) if n >= 2 else None
        except Exception as e:      # workers that cannot start: the first launches compile, as without them
            warnings.warn(f"eetjit: compiling in worker processes failed ({type(e).__name__}: {e}); kernels "
                          "compile at their first launch", RuntimeWarning, stacklevel=2)
            return None

    def stream(self, prompts, max_new_tokens=32, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               eos_token_id=None) -> Iterator[list]:
        prompts, eos, rng, B, P, pad, ids, positions = self._prepare(
            prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos_token_id)
        backend, dev = self.backend, self.backend.dev
        self.compile_ahead(B, P)
        logits = self.prompt_pass(B, P)(ids, positions, pad)          # the prompt pass (a graph once repeated)
        step = self.decode_step(B)
        dev.set(step.start, pad)
        dev.set(step.positions, (P - 1 - pad)[:, None])               # the tail advances them to the 1st step's
        dev.set(step.step, [P - 1])
        backend.greedy_tokens(logits, step.tokens, step.ids, step.positions, step.step)
        uniforms = None
        if do_sample:
            # One uniform number per row and token from the seeded stream, in the order the host's `select`
            # draws them, uploaded once: an upload from pageable memory inside the loop may wait for the queued
            # steps.
            uniforms = backend.zeros((max_new_tokens, B), np.float32)
            dev.set(uniforms, rng.random((max_new_tokens, B)))

        def pick(logits, i: int):
            """Queue token i's pick after its logits (greedy: already done by the step's tail; sampled: on the
            device, into step.tokens and the next step's ids) and the copy of the tokens to the host."""
            if do_sample:
                sample_tokens(backend, logits, step.tokens, uniforms[i], temperature, top_k, top_p, ids_B1=step.ids)
            return dev.to_host_async(step.tokens)

        per_launch = 1 if do_sample else decode_steps()
        queued = 1                      # tokens queued so far (token 0: the prompt pass's)

        def queue_next():
            """Queue the next decode steps (a block of `per_launch` greedy steps in one launch when that many are
            left and the step allows it, else one) and the copy of their tokens to the host: (n, wait), wait()
            giving the tokens [n, B] (or [B] for one); None when max_new_tokens are queued."""
            nonlocal queued
            left = max_new_tokens - queued
            if left <= 0:
                return None
            if per_launch > 1 and left >= per_launch and step.can_run_many(per_launch):
                queued += per_launch
                return per_launch, dev.to_host_async(step.steps(per_launch))
            queued += 1
            return 1, pick(step.run(), queued - 1)

        # Pipelined: the next block of decode steps is queued behind the copy of this block's tokens before the
        # host waits for that copy, so the device never idles while the host reads tokens, checks eos and yields.
        # Steps are queued only up to max_new_tokens; when eos ends every row, the queued ones are wasted.
        pending = (1, pick(logits, 0))
        finished = np.zeros(B, bool)
        produced = 0
        ahead = None
        try:
            while True:
                ahead = queue_next()
                n, wait = pending
                for tokens in np.asarray(wait()).reshape(n, B):
                    yield self._report(tokens, finished, eos)
                    produced += 1
                    if produced >= max_new_tokens or finished.all():
                        return
                pending = ahead
        finally:
            # a copy still queued (eos, or the caller stopped reading) must land before its pinned block can go
            # back to CuPy's pool and be handed out again
            if ahead is not None:      # waiting twice for a copy is harmless
                ahead[1]()
