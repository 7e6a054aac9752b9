"""The graph IR: typed values with symbolic dims, nodes, constants as NumPy arrays, users of each value.

Small on purpose: the runtime executes this graph directly (nodes in order, values by identity), and the
rewriter mutates it in place. Every mutation goes through Graph methods so `Value.users` stays true.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

Dim = int | str | None  # int: fixed; str: symbolic name; None: unknown


@dataclass(eq=False)
class Value:
    name: str
    dtype: np.dtype | None = None
    shape: tuple[Dim, ...] | None = None
    const: np.ndarray | None = None  # initializers and folded constants
    producer: "Node | None" = None
    users: list["Node"] = field(default_factory=list)

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def __repr__(self) -> str:
        dt = "?" if self.dtype is None else np.dtype(self.dtype).name
        sh = "?" if self.shape is None else "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"%{self.name}:{dt}{sh}" + ("=const" if self.is_const else "")


@dataclass(eq=False)
class Node:
    op_type: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    name: str = ""

    def __repr__(self) -> str:
        ins = ", ".join("None" if v is None else v.name for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        dom = f"{self.domain}." if self.domain else ""
        return f"{outs} = {dom}{self.op_type}({ins})"

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None


class Graph:
    """Nodes kept in topological order; values indexed by name."""

    def __init__(self, name: str = "graph", opsets: dict[str, int] | None = None):
        self.name = name
        self.opsets: dict[str, int] = dict(opsets or {})
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.metadata: dict[str, Any] = {}
        self._counter = 0

    # --- values ---------------------------------------------------------------------------------
    def value(self, name: str | None = None, dtype=None, shape=None, const: np.ndarray | None = None) -> Value:
        if name is None or name in self.values:
            name = self.fresh_name(name or "v")
        if const is not None:
            const = np.asarray(const)
            dtype, shape = const.dtype, tuple(const.shape)
        v = Value(name, None if dtype is None else np.dtype(dtype), None if shape is None else tuple(shape), const)
        self.values[name] = v
        return v

    def constant(self, array, name: str | None = None) -> Value:
        return self.value(name or "const", const=np.asarray(array))

    def fresh_name(self, base: str) -> str:
        while True:
            self._counter += 1
            name = f"{base}__{self._counter}"
            if name not in self.values:
                return name

    @property
    def initializers(self) -> list[Value]:
        return [v for v in self.values.values() if v.is_const and v.producer is None]

    # --- nodes ----------------------------------------------------------------------------------
    def add_node(self, op_type: str, inputs: Iterable[Value | None], outputs: Iterable[Value] | int = 1,
                 attrs: dict | None = None, domain: str = "", name: str = "", before: Node | None = None) -> Node:
        """Create a node; `outputs` may be a count (fresh values are made). Inserted before `before`
        (to keep topological order) or appended."""
        if isinstance(outputs, int):
            outputs = [self.value(f"{op_type.lower()}_out") for _ in range(outputs)]
        node = Node(op_type, list(inputs), list(outputs), dict(attrs or {}), domain, name or self.fresh_name(op_type))
        for v in node.inputs:
            if v is not None:
                v.users.append(node)
        for v in node.outputs:
            v.producer = node
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def remove_node(self, node: Node) -> None:
        for v in node.inputs:
            if v is not None and node in v.users:
                v.users.remove(node)
        for v in node.outputs:
            if v.producer is node:
                v.producer = None
        self.nodes.remove(node)

    def set_input(self, node: Node, i: int, v: Value | None) -> None:
        old = node.inputs[i]
        if old is not None and node in old.users:
            old.users.remove(node)
        node.inputs[i] = v
        if v is not None:
            v.users.append(node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every consumer of `old` (and the graph outputs) reads `new` instead."""
        for node in list(old.users):
            for i, v in enumerate(node.inputs):
                if v is old:
                    self.set_input(node, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def is_output(self, v: Value) -> bool:
        return any(o is v for o in self.outputs)

    def remove_dead(self) -> int:
        """Drop nodes none of whose outputs is used or a graph output. Returns how many went."""
        removed = 0
        for node in reversed(list(self.nodes)):
            if all(not o.users and not self.is_output(o) for o in node.outputs):
                self.remove_node(node)
                removed += 1
        live = {id(v) for n in self.nodes for v in n.inputs + n.outputs if v is not None}
        live |= {id(v) for v in self.inputs + self.outputs}
        self.values = {k: v for k, v in self.values.items() if id(v) in live}
        return removed

    def toposort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is already valid (Kahn's
        algorithm with a heap on the old position). Raises ValueError naming a node on a cycle."""
        import heapq
        pos = {id(n): i for i, n in enumerate(self.nodes)}
        waiting: dict[int, int] = {}
        for n in self.nodes:
            waiting[id(n)] = len({id(v.producer) for v in n.inputs
                                  if v is not None and v.producer is not None and id(v.producer) in pos})
        heap = [(pos[id(n)], n) for n in self.nodes if waiting[id(n)] == 0]
        heapq.heapify(heap)
        order: list[Node] = []
        while heap:
            _, n = heapq.heappop(heap)
            order.append(n)
            released = set()
            for o in n.outputs:
                for u in o.users:
                    if id(u) in pos and id(u) not in released:
                        released.add(id(u))
                        waiting[id(u)] -= 1
                        if waiting[id(u)] == 0:
                            heapq.heappush(heap, (pos[id(u)], u))
        if len(order) != len(self.nodes):
            stuck = next(n for n in self.nodes if waiting[id(n)] > 0)
            raise ValueError(f"graph has a cycle at node {stuck.name!r} ({stuck.op_type})")
        self.nodes = order

    def copy(self) -> "Graph":
        """A structural copy: new nodes and values, constant arrays shared (weights are never copied)."""
        g = Graph(self.name, self.opsets)
        g.metadata = dict(self.metadata)
        g._counter = self._counter
        vmap: dict[int, Value] = {}
        for v in self.values.values():
            vmap[id(v)] = g.value(v.name, v.dtype, v.shape)
            vmap[id(v)].const = v.const
        def m(v):
            return None if v is None else vmap[id(v)]
        g.inputs = [m(v) for v in self.inputs]
        for n in self.nodes:
            g.add_node(n.op_type, [m(v) for v in n.inputs], [m(v) for v in n.outputs], dict(n.attrs), n.domain,
                       n.name)
        g.outputs = [m(v) for v in self.outputs]
        return g

    # --- inspection -----------------------------------------------------------------------------
    def op_histogram(self) -> dict[str, int]:
        return dict(Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                            for n in self.nodes).most_common())

    def opset(self, domain: str = "") -> int:
        return self.opsets.get(domain, self.opsets.get("ai.onnx", 0) if domain == "" else 1)

    def __repr__(self) -> str:
        lines = [f"graph {self.name}(" + ", ".join(map(repr, self.inputs)) + ")"]
        lines += ["  " + repr(n) for n in self.nodes]
        lines.append("  return " + ", ".join(v.name for v in self.outputs))
        return "\n".join(lines)
