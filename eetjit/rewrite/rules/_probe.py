"""Probing: evaluate parts of a graph on small concrete inputs, to check what a subgraph *means*.

Attention and rotary exports differ in how they build shapes, masks and position tables, but not in what
those compute. Rather than match every spelling, the rules evaluate the subgraph on a few probe batches
(several B, S, left/right/both-sided padding) and compare with the semantics the fused op implements.

`Probe` is a lazy, memoized evaluator: asking for one value runs only the nodes it depends on, `Shape` of a
value costs nothing where its dims are known without computing it (declared in terms of the graph inputs'
symbols, or inferred from its producer's input shapes by SHAPE_RULES, below: ts17 exports leave the dims after
each projection unnamed), and
`overrides` inject chosen arrays (e.g. index codes at a projection output, to trace a layout through
Reshape/Transpose chains). A child probe (with overrides) delegates every value that is not downstream of an
override to its parent, so the base probes of a graph (one per config, cached on the graph) are computed once.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from eetjit.ir import Graph, Node, Value


class ProbeError(Exception):
    """The probe could not evaluate something; the message says what (it becomes a near-miss reason)."""


@dataclass(frozen=True)
class Config:
    """A probe batch: B rows of S tokens; `rows[b]` = (first, one-past-last) valid column of row b."""
    B: int
    S: int
    rows: tuple[tuple[int, int], ...]

    def mask(self) -> np.ndarray:
        m = np.zeros((self.B, self.S), np.int64)
        for b, (lo, hi) in enumerate(self.rows):
            m[b, lo:hi] = 1
        return m


# B and S differ from each other and from typical head counts/dims; each config pads differently.
LEFT = Config(3, 5, ((0, 5), (2, 5), (4, 5)))
RIGHT = Config(3, 5, ((0, 5), (0, 2), (0, 4)))
FULL = Config(1, 4, ((0, 4),))
BOTH = Config(2, 6, ((1, 4), (0, 6)))
MASK_CONFIGS = (LEFT, RIGHT, FULL, BOTH)
LAYOUT_CONFIG = LEFT

SHAPE_ONLY = ("Shape", "Size")


def _feed(graph: Graph, v: Value, cfg: Config) -> np.ndarray:
    """A probe value for graph input `v`, chosen by its role: [B, S] masks, positions, token types and ids;
    float [B, S, ...] inputs (embeddings fed directly) get seeded random values."""
    shape = v.shape
    if shape is None or len(shape) < 2 or any(not isinstance(d, int) for d in shape[2:]) \
            or any(isinstance(d, int) and d != n for d, n in zip(shape[:2], (cfg.B, cfg.S))):
        raise ProbeError(f"cannot make a probe value for input {v.name!r} of shape {shape} "
                         f"(only [B, S, ...] inputs with fixed trailing dims)")
    dtype = np.dtype(v.dtype) if v.dtype is not None else np.dtype(np.int64)
    full = (cfg.B, cfg.S) + tuple(shape[2:])
    if dtype.kind == "f" and len(shape) > 2:
        rng = np.random.default_rng(len(v.name))
        return rng.standard_normal(full).astype(dtype)
    if len(shape) != 2:
        raise ProbeError(f"cannot make a probe value for input {v.name!r} of shape {shape} ({dtype})")
    name = v.name.lower()
    mask = cfg.mask()
    if "mask" in name:
        arr = mask
    elif "position" in name:
        arr = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    elif "type" in name:
        arr = np.zeros((cfg.B, cfg.S), np.int64)
    elif dtype.kind in "iu":
        arr = 3 + (np.arange(cfg.B * cfg.S).reshape(cfg.B, cfg.S) % 5)
    else:
        raise ProbeError(f"cannot make a probe value for input {v.name!r} ({dtype})")
    return arr.astype(dtype)


def _bindings(graph: Graph, cfg: Config) -> dict[str, int]:
    """Symbolic leading dims of the [B, S, ...] graph inputs bound to the probe's B and S."""
    out: dict[str, int] = {}
    for v in graph.inputs:
        if v.shape is not None and len(v.shape) >= 2:
            for d, n in zip(v.shape, (cfg.B, cfg.S)):
                if isinstance(d, str):
                    out.setdefault(d, n)
    return out


def _dim(d, binds: dict[str, int]) -> int | None:
    if isinstance(d, int):
        return d
    if isinstance(d, str):
        n = 1
        for part in d.split("*"):
            part = part.strip()
            if part.isdigit():
                n *= int(part)
            elif part in binds:
                n *= binds[part]
            else:
                return None
        return n
    return None


class Probe:
    def __init__(self, graph: Graph, cfg: Config, overrides: dict[Value, np.ndarray] | None = None,
                 identity: set[int] | frozenset = frozenset(), parent: "Probe | None" = None):
        self.graph, self.cfg, self.parent = graph, cfg, parent
        self.overrides = dict(overrides or {})
        self.identity = set(identity)       # ids of nodes evaluated as "output = data input" (scales, casts)
        self.memo: dict[Value, np.ndarray] = {}
        self.shapes: dict[Value, tuple[int, ...] | None] = {}     # inferred (static_shape); None: not inferable
        self.binds = _bindings(graph, cfg)
        self.inputs = {id(v) for v in graph.inputs}
        self.downstream: set[int] | None = None
        if parent is not None:
            self.downstream = _downstream(list(self.overrides))

    def child(self, overrides: dict[Value, np.ndarray], identity=frozenset()) -> "Probe":
        return type(self)(self.graph, self.cfg, overrides, identity, parent=self)

    # --- shapes -----------------------------------------------------------------------------------
    def _known_shape(self, v: Value) -> tuple[int, ...] | None:
        """v's shape where it is at hand: computed, overridden, a constant, or declared with bound dims."""
        if v in self.memo:
            return tuple(self.memo[v].shape)
        if v in self.overrides:
            return tuple(np.shape(self.overrides[v]))
        if v.is_const:
            return tuple(v.const.shape)
        if v.shape is None:
            return None
        dims = [_dim(d, self.binds) for d in v.shape]
        return None if any(d is None for d in dims) else tuple(dims)

    def static_shape(self, v: Value) -> tuple[int, ...] | None:
        """v's shape without computing a value: at hand, or inferred from its producer's input shapes (SHAPE_RULES)
        where every input's shape is. Exports whose shape inference left a dim unnamed (ts17's 'unk__N' after
        each Linear) would otherwise have the whole model run through the reference kernels to learn a shape."""
        known = self._known_shape(v)
        if known is not None or v.producer is None:
            return known
        if v not in self.shapes:
            self._infer(v)
        return self.shapes[v]

    def _infer(self, v: Value) -> None:
        """Fill self.shapes for v and what it needs, producers first (a loop, not recursion: the residual stream
        of a deep model is a long chain)."""
        stack = [v]
        while stack:
            cur = stack[-1]
            if cur in self.shapes:
                stack.pop()
                continue
            known = self._known_shape(cur)
            node = cur.producer
            rule = None if node is None else SHAPE_RULES.get((node.domain, node.op_type))
            if known is not None or node is None or (rule is None and id(node) not in self.identity):
                self.shapes[cur] = known
                stack.pop()
                continue
            if id(node) in self.identity:          # a probe's pass-through scale or cast: its data input's shape
                src = data_input(node)
                if src not in self.shapes:
                    stack.append(src)
                    continue
                self.shapes[cur] = self.shapes[src]
                stack.pop()
                continue
            fn, needed = rule
            needed = [x for i, x in enumerate(node.inputs) if x is not None and (needed is None or i in needed)]
            missing = [x for x in needed if x not in self.shapes]
            if missing:
                stack.extend(missing)
                continue
            ins = [self.shapes.get(x) if x is not None else None for x in node.inputs]
            outs = None
            if all(self.shapes[x] is not None for x in needed):
                try:
                    outs = fn(node, ins, self)
                except Exception:  # noqa: BLE001 - a rule that cannot tell (a malformed node): compute instead
                    outs = None
            for i, o in enumerate(node.outputs):
                if o is not None:
                    # a sibling output already at hand (computed, overridden, declared) keeps that shape
                    known = self._known_shape(o)
                    self.shapes[o] = known if known is not None else (
                        None if outs is None or i >= len(outs) else tuple(int(d) for d in outs[i]))
            self.shapes.setdefault(cur, None)
            stack.pop()

    def shape(self, v: Value) -> tuple[int, ...]:
        s = self.static_shape(v)
        return s if s is not None else tuple(self.value(v).shape)

    # --- values -----------------------------------------------------------------------------------
    def _leaf(self, v: Value):
        if v in self.overrides:
            return np.asarray(self.overrides[v])
        if v.is_const:
            return v.const
        if id(v) in self.inputs:
            return _feed(self.graph, v, self.cfg)
        if self.parent is not None and v.producer is not None and id(v.producer) not in self.downstream:
            return self.parent.value(v)
        return None

    def _deps(self, node: Node) -> list[Value]:
        if node.op_type in SHAPE_ONLY and node.domain == "":
            x = node.inputs[0]
            return [] if self.static_shape(x) is not None else [x]
        if id(node) in self.identity:
            return [data_input(node)]
        return [v for v in node.inputs if v is not None]

    def value(self, v: Value) -> np.ndarray:
        if v in self.memo:
            return self.memo[v]
        stack = [v]
        while stack:
            cur = stack[-1]
            if cur in self.memo:
                stack.pop()
                continue
            leaf = self._leaf(cur)
            if leaf is not None:
                self.memo[cur] = leaf
                stack.pop()
                continue
            node = cur.producer
            if node is None:
                raise ProbeError(f"value {cur.name!r} has no producer")
            missing = [d for d in self._deps(node) if d not in self.memo]
            if missing:
                stack.extend(missing)
                continue
            for o, a in zip(node.outputs, self._run(node)):
                self.memo[o] = np.asarray(a)
            if cur not in self.memo:
                raise ProbeError(f"node {node.name!r} did not produce {cur.name!r}")
            stack.pop()
        return self.memo[v]

    def _run(self, node: Node) -> list:
        if node.op_type in SHAPE_ONLY and node.domain == "":
            dims = self.shape(node.inputs[0])
            if node.op_type == "Size":
                return [np.array(int(np.prod(dims)), np.int64)]
            from eetjit.reference.ops.op_shape import shape
            start = node.attrs.get("start", 0) if self.graph.opset() >= 15 else 0
            end = node.attrs.get("end") if self.graph.opset() >= 15 else None
            return [shape(_Dims(dims), start, end)]
        if id(node) in self.identity:
            return [self.memo[data_input(node)]]
        from eetjit.reference.executor import run_node
        args = [None if v is None else self.memo[v] for v in node.inputs]
        try:
            return run_node(node, args, self.graph)
        except Exception as e:  # noqa: BLE001 - any kernel failure means "cannot probe"
            raise ProbeError(f"probing failed at {node.name!r} ({node.op_type}): {e}") from e


class _Dims:
    """Stands in for an array in np.shape() without allocating it."""

    def __init__(self, dims):
        self.shape = tuple(dims)


def data_input(node: Node) -> Value:
    """The non-constant input of a scale Mul/Div (or the only input of a Cast/Identity)."""
    for v in node.inputs:
        if v is not None and not v.is_const:
            return v
    return node.inputs[0]


# --- shape rules (Probe.static_shape) ------------------------------------------------------------------------
# (domain, op) -> (f, the inputs whose shapes f needs: indices, None for all). f(node, input shapes (None where absent
# or not needed), probe) -> output shapes. Only ops whose output shapes follow from those input shapes, attributes
# and small integer inputs (a Reshape's target, which the probe computes: Shape chains); f raises (ValueError etc.)
# or returns None where it cannot tell, and the probe then computes the value. tests/rewrite/test_probe.py checks
# every rule against the shapes the reference kernels produce.

def _same(node, ins, probe):
    return [ins[0]] * len(node.outputs)


def _broadcast(node, ins, probe):
    return [np.broadcast_shapes(*[s for s in ins if s is not None])] * len(node.outputs)


def _matmul(node, ins, probe):
    a, b = ins[0], ins[1]
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    return [np.broadcast_shapes(a[:-2], b[:-2]) + (a[-2], b[-1])]


def _linear(node, ins, probe):                          # eet.Linear: x [..., K] @ W [K, N], split over N
    x, w = ins[0], ins[1]
    if len(w) != 2 or x[-1] != w[0]:
        return None
    split = node.attrs.get("split")
    if split and sum(int(n) for n in split) != w[1]:
        return None
    return [x[:-1] + (int(n),) for n in split] if split else [x[:-1] + (w[1],)]


def _swiglu(node, ins, probe):
    x, w = ins[0], ins[1]
    return None if len(w) != 2 or x[-1] != w[0] else [x[:-1] + (w[1],)]


def _heads(node, ins, probe):                           # eet.Attention: [B, S, heads * head_dim]
    return [ins[0][:-1] + (int(node.attrs["num_heads"]) * int(node.attrs["head_dim"]),)]


def _embedding(node, ins, probe):                       # eet.Embedding: ids [B, S] -> [B, S, E]
    return [ins[0] + (ins[2][1],)]


def _gather(node, ins, probe):
    data, idx = ins[0], ins[1]
    axis = int(node.attrs.get("axis", 0))
    axis += len(data) if axis < 0 else 0
    if not 0 <= axis < len(data):
        return None
    return [data[:axis] + idx + data[axis + 1:]]


def _split(node, ins, probe):
    x = ins[0]
    axis = int(node.attrs.get("axis", 0))
    axis += len(x) if axis < 0 else 0
    if not 0 <= axis < len(x):
        return None
    # the sizes as the kernel (eetjit/reference/ops/op_split.py) takes them, and None wherever it would raise
    opset = probe.graph.opset()
    if opset < 13:
        sizes = node.attrs.get("split")
        if opset < 2 and sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            return None
    else:
        s = node.inputs[1] if len(node.inputs) > 1 else None
        if s is not None and not s.is_const:
            return None
        sizes = None if s is None else [int(d) for d in s.const.reshape(-1)]
    n = node.attrs.get("num_outputs") if opset >= 18 else None
    if sizes is not None and n is not None:
        return None
    if sizes is None:
        if n is None:
            n = len(node.outputs)
            if opset < 18 and x[axis] % n:
                return None
        n = int(n)
        if n < 1:
            return None
        chunk = -(-x[axis] // n)
        sizes = [min(chunk, max(x[axis] - i * chunk, 0)) for i in range(n)]
    if sum(sizes) != x[axis] or len(sizes) != len(node.outputs) or min(sizes) < 0:
        return None
    return [x[:axis] + (int(d),) + x[axis + 1:] for d in sizes]


def _reshape(node, ins, probe):
    x = ins[0]
    target = [int(d) for d in np.asarray(probe.value(node.inputs[1])).reshape(-1)]
    if not node.attrs.get("allowzero", 0):
        target = [x[i] if d == 0 and i < len(x) else d for i, d in enumerate(target)]
    if target.count(-1) == 1:
        rest = math.prod(d for d in target if d != -1)
        if rest <= 0 or math.prod(x) % rest:
            return None
        target[target.index(-1)] = math.prod(x) // rest
    return [tuple(target)] if min(target, default=0) >= 0 and math.prod(target) == math.prod(x) else None


SHAPE_RULES = {
    **{("", op): (_same, (0,)) for op in ("Cast", "Neg", "Cos", "Sin", "Tanh", "Relu", "Sigmoid", "Erf", "Sqrt",
                                          "Exp", "Log", "Abs", "Reciprocal", "Not", "Identity", "Softmax", "Gelu")},
    **{("", op): (_broadcast, None) for op in ("Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Equal", "Less",
                                               "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "Max", "Min")},
    ("", "MatMul"): (_matmul, None),
    ("", "Gather"): (_gather, None),
    ("", "Split"): (_split, (0,)),
    ("", "Reshape"): (_reshape, (0,)),
    **{("eet", op): (_same, (0,)) for op in ("LayerNorm", "RMSNorm", "Rotary")},
    **{("eet", op): (_broadcast, (0, 1)) for op in ("AddLayerNorm", "AddRMSNorm")},
    ("eet", "Linear"): (_linear, (0, 1)),
    ("eet", "SwiGLU"): (_swiglu, (0, 1)),
    ("eet", "Attention"): (_heads, (0,)),
    ("eet", "Embedding"): (_embedding, (0, 2)),
}


def _downstream(values: list[Value]) -> set[int]:
    seen: set[int] = set()
    todo = [u for v in values for u in v.users]
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for o in n.outputs:
            todo.extend(o.users)
    return seen


# --- per-graph cache ----------------------------------------------------------------------------------

_CACHE: "weakref.WeakKeyDictionary[Graph, dict]" = weakref.WeakKeyDictionary()


def cache(graph: Graph) -> dict:
    """Scratch space that lives as long as the graph (base probes, analysed masks, shared PadInfo...)."""
    c = _CACHE.get(graph)
    if c is None:
        c = _CACHE[graph] = {}
    return c


def base_probe(graph: Graph, cfg: Config) -> Probe:
    probes = cache(graph).setdefault("probes", {})
    if cfg not in probes:
        probes[cfg] = Probe(graph, cfg)
    return probes[cfg]


# --- dependency questions -----------------------------------------------------------------------------

def data_ancestry(v: Value, limit: int = 5000) -> tuple[list[Node], list[Value]]:
    """Nodes `v`'s data depends on (not through Shape/Size, which read only shapes) and the graph-input /
    producer-less non-constant values reached. Raises ProbeError past `limit` nodes."""
    nodes: list[Node] = []
    leaves: list[Value] = []
    seen: set[int] = set()
    todo = [v]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if cur.is_const:
            continue
        node = cur.producer
        if node is None:
            leaves.append(cur)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        if len(nodes) > limit:
            raise ProbeError(f"{v.name!r} depends on more than {limit} nodes")
        if node.op_type in SHAPE_ONLY and node.domain == "":
            continue
        todo.extend(x for x in node.inputs if x is not None)
    return nodes, leaves


def weight_reader(nodes: list[Node]) -> Node | None:
    """A node among `nodes` that reads a weight-like constant (float, >= 2 dims longer than 1): embedding
    lookups, projections. Masks and rotary tables are built without any."""
    for n in nodes:
        for x in n.inputs:
            if (x is not None and x.is_const and x.const.dtype.kind == "f"
                    and sum(1 for d in x.const.shape if d > 1) >= 2):
                return n
    return None
