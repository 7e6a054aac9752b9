"""ExecutionPlan: a graph bound to a backend's prepared ops, run step by step with planned buffers.

Every value gets a slot; constants are loaded once. The first run with a new input signature (names,
shapes, dtypes) traces the output shapes of every step; from them a memory plan assigns each kernel output a
buffer, reusing a buffer once the last reader of the value in it has run (liveness). Later runs with that
signature pass those buffers as `out=`, so steady state allocates nothing but the outputs handed back to
the caller (never buffers the plan will overwrite) and what fallback ops (shape plumbing) make.
Values produced by fallback ops may be views of kernel buffers (a Reshape); such a view keeps its base
buffer alive as long as the view is read. On a backend with `column_outputs`, a kernel op whose outputs were
column blocks of one array in the traced run (a split Linear's q/k/v) gets one block again, as column views.
`arena(feeds)` hands a signature's buffers to eetjit.runtime.cuda_graph, which captures runs on them.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext

import numpy as np

from eetjit.errors import ExecutionError, InputError, ModelError
from eetjit.ir import Graph


class ExecutionPlan:
    MAX_SIGNATURES = 16

    def __init__(self, graph: Graph, backend, verbose: bool = True):
        self.graph = graph
        self.backend = backend
        slot: dict[int, int] = {}
        for v in graph.values.values():
            slot.setdefault(id(v), len(slot))
        self.n_slots = len(slot)
        self.consts = [(slot[id(v)], v.const) for v in graph.values.values() if v.is_const]
        self.input_slots = [(v.name, slot[id(v)]) for v in graph.inputs]
        self.output_slots = [slot[id(v)] for v in graph.outputs]
        self.output_names = [v.name for v in graph.outputs]
        self.ops = backend.prepare_all(graph.nodes, graph, verbose=verbose)
        self.steps = [([None if v is None else slot[id(v)] for v in n.inputs], [slot[id(v)] for v in n.outputs])
                      for n in graph.nodes]
        last_use = {}
        for i, (ins, _) in enumerate(self.steps):
            for s in ins:
                if s is not None:
                    last_use[s] = i
        self.last_use = last_use
        self._kernel_slots = {s for op, (_, outs) in zip(self.ops, self.steps) if not op.fallback for s in outs}
        self._alias: dict[int, int] = {}
        self._columns: dict[int, tuple] = {}    # step -> column layout of its outputs (see _column_layout)
        self._arenas: OrderedDict = OrderedDict()
        self.allocations = 0     # buffers the memory plans created (tests read it)

    # --- running ---------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], output_names=None) -> list[np.ndarray]:
        env: list = [None] * self.n_slots
        for s, arr in self.consts:
            env[s] = arr
        for name, s in self.input_slots:
            env[s] = feeds[name]
        sig = self._signature(feeds)
        arena = self._arenas.get(sig)
        if arena is None:
            # the backend may treat this run's buffers as temporaries (CudaBackend.transient: keep no GEMM plan)
            with getattr(self.backend, "transient", nullcontext)():
                shapes = self._execute(env, None)
            self._arenas[sig] = self._plan_memory(shapes)
            if len(self._arenas) > self.MAX_SIGNATURES:
                self._arenas.popitem(last=False)
        else:
            self._arenas.move_to_end(sig)
            self._execute(env, arena)
        return self.select([env[s] for s in self.output_slots], output_names)

    def select(self, outputs: list, output_names=None) -> list:
        """The graph's outputs (in graph order) picked by name (None: all)."""
        if output_names is None:
            return outputs
        out = []
        for name in output_names:
            if name not in self.output_names:
                raise InputError(f"unknown output name {name!r}; the model's outputs are {self.output_names}")
            out.append(outputs[self.output_names.index(name)])
        return out

    def _signature(self, feeds) -> tuple:
        return tuple((name, tuple(feeds[name].shape), feeds[name].dtype.str) for name, _ in self.input_slots)

    def arena(self, feeds) -> list | None:
        """The memory plan of the feeds' signature (per step: the out= buffers of a kernel op, None for fallback
        ops and for graph outputs), or None until a run has traced that signature."""
        return self._arenas.get(self._signature(feeds))

    def _execute(self, env: list, arena):
        """Run every step. Values are dropped after their last reader, so the first run of a signature (which
        allocates every kernel output afresh) holds only the live set, not the whole graph's activations; it
        also records each output's (shape, dtype) and which fallback outputs are views of kernel buffers."""
        trace = [] if arena is None else None
        if trace is not None:
            self._alias = {}
            self._columns = {}
        keep = set(self.output_slots)
        for i, (op, (ins, outs)) in enumerate(zip(self.ops, self.steps)):
            args = [None if s is None else env[s] for s in ins]
            bufs = None if arena is None else arena[i]
            try:
                results = op(args, bufs)
            except (InputError, ModelError, ExecutionError):
                raise
            except Exception as e:
                node = op.node
                shapes = ", ".join("None" if a is None else f"{a.dtype}{list(np.shape(a))}" for a in args)
                raise ExecutionError(f"node {node.name!r} ({node.domain + '.' if node.domain else ''}"
                                     f"{node.op_type}) failed on inputs ({shapes}): {e}") from e
            for s, r in zip(outs, results):
                env[s] = r
            if trace is not None:
                trace.append([(r.shape, r.dtype) if _is_array(r) else None for r in results])
                if op.fallback:
                    self._note_aliases(env, ins, outs)
                elif len(results) > 1 and getattr(self.backend, "column_outputs", False):
                    layout = _column_layout(results)
                    if layout is not None:
                        self._columns[i] = layout
            for s in ins:  # drop what no later step reads
                if s is not None and self.last_use.get(s) == i and s not in keep:
                    env[s] = None
        return trace

    def _note_aliases(self, env, ins, outs) -> None:
        """A fallback op's output that is a view of one of its inputs which lives in a kernel buffer (directly
        or through earlier views) is recorded as an alias of that buffer's slot: the view keeps it alive."""
        alias = self._alias
        for s in outs:
            r = env[s]
            if not _is_array(r) or getattr(r, "base", None) is None:
                continue
            for k in ins:
                if k is None or not _is_array(env[k]):
                    continue
                base = alias.get(k, k)
                if (k in alias or k in self._kernel_slots) and _shares_memory(r, env[k]):
                    alias[s] = base
                    break

    def _take(self, free: dict, key: str, n: int, dtype):
        """The smallest free flat block of `key` dtype holding n elements (best fit), or a new one."""
        pool = free.setdefault(key, [])
        fit = next((j for j, b in enumerate(pool) if b.shape[0] >= n), None)
        if fit is not None:
            return pool.pop(fit)
        self.allocations += 1
        return self.backend.empty((max(n, 1),), dtype)

    def _plan_memory(self, trace) -> list:
        """Per step, the out= buffers of a kernel op (None for fallback ops). Buffers are flat blocks of one dtype,
        handed out best-fit by size and viewed as the value's shape, and a block returns to the free list after
        the last reader of its value: the plan holds about the peak live bytes per dtype, whatever the shapes."""
        alias = self._alias
        end = dict(self.last_use)
        for view, base in alias.items():  # a view keeps its base alive
            end[base] = max(end.get(base, -1), end.get(view, -1))
        outputs = set(self.output_slots)
        free: dict[str, list] = {}        # dtype -> flat blocks, kept sorted by size
        releases: dict[int, list] = {}
        plan = []
        for i, (op, (_, outs)) in enumerate(zip(self.ops, self.steps)):
            for key, block in releases.pop(i, []):
                pool = free.setdefault(key, [])
                pool.append(block)
                pool.sort(key=lambda b: b.shape[0])
            if op.fallback or any(t is None for t in trace[i]):
                plan.append(None)
                continue
            layout = self._columns.get(i)
            bufs = []
            if layout is not None and not any(s in outputs for s in outs[:len(layout[1])]):
                # leading outputs that were column blocks of one [M, N] array (a split Linear's q/k/v): one block
                # again, so the GEMM writes them in place; it lives until the last reader of any of them
                (M, N), offsets = layout
                key = np.dtype(trace[i][0][1]).str
                block = self._take(free, key, M * N, trace[i][0][1])
                base = block[:M * N].reshape(M, N)
                bufs = [base[:, o:o + shape[-1]].reshape(shape) for o, (shape, _) in zip(offsets, trace[i])]
                last = max(end.get(s, i) for s in outs[:len(offsets)])
                releases.setdefault(last + 1, []).append((key, block))
            for s, (shape, dtype) in list(zip(outs, trace[i]))[len(bufs):]:
                if s in outputs:
                    bufs.append(None)  # handed to the caller: a fresh array every run
                    continue
                key = np.dtype(dtype).str
                n = int(np.prod(shape, dtype=np.int64))
                block = self._take(free, key, n, dtype)
                bufs.append(block[:n].reshape(shape))
                releases.setdefault(end.get(s, i) + 1, []).append((key, block))
            plan.append(bufs)
        return plan


def _column_layout(results):
    """((M, N), column offsets) when the leading arrays (at least two; the rest are separate, as a NormLinear's
    residual sum after its q/k/v) are column blocks [M, o:o+n] (reshaped) of one C-contiguous [M, N] array, in
    order and covering it; else None."""
    bases = []
    for r in results:
        b = r
        while getattr(b, "base", None) is not None:
            b = b.base
        bases.append(b)
    base = bases[0]
    count = next((j for j, b in enumerate(bases) if b is not base), len(bases))
    results = results[:count]
    if not _is_array(base) or count < 2 or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    M, N = base.shape
    start = _data_ptr(base)
    offsets, o = [], 0
    for r in results:
        n = r.shape[-1]
        if _data_ptr(r) != start + o * base.dtype.itemsize or r.size != M * n or r.strides[-1] != base.itemsize:
            return None
        offsets.append(o)
        o += n
    return ((M, N), offsets) if o == N else None


def _data_ptr(x) -> int:
    cai = getattr(x, "__cuda_array_interface__", None)
    return int(cai["data"][0]) if cai is not None else int(x.__array_interface__["data"][0])


def _is_array(x) -> bool:
    """A host (NumPy) or device (CuPy, `__cuda_array_interface__`) array."""
    return isinstance(x, np.ndarray) or hasattr(x, "__cuda_array_interface__")


def _shares_memory(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    ia, ib = getattr(a, "__cuda_array_interface__", None), getattr(b, "__cuda_array_interface__", None)
    if ia is None or ib is None:
        return False
    return _span(a, ia)[0] < _span(b, ib)[1] and _span(b, ib)[0] < _span(a, ia)[1]


def _span(x, cai) -> tuple[int, int]:
    """[first, last + 1) byte addresses a device array can touch."""
    lo = hi = int(cai["data"][0])
    for n, st in zip(x.shape, x.strides):
        if n == 0:
            return lo, lo
        (lo, hi) = (lo + (n - 1) * st, hi) if st < 0 else (lo, hi + (n - 1) * st)
    return lo, hi + x.dtype.itemsize
