"""A rule = pattern + check (returns why it failed, or None) + rewrite (emits one `eet` op)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.pattern import Flat, Match, Op, Pat


@dataclass
class Rule:
    name: str                                   # unique, shown in traces: "LayerNorm/ReduceMean"
    fused_op: str                               # the eet op it emits (FusionReport.counts key)
    pattern: Pat | Callable[[Graph, Node], "Match | str | None"]
    check: Callable[[Graph, Match], str | None]
    rewrite: Callable[[Graph, Match], None]
    root_ops: tuple[str, ...] = ()              # op types a root node may have (anchors the search)
    template: str = ""                          # the kernel template the fused op lowers to
    allow_shared: tuple[str, ...] = field(default_factory=tuple)  # node names whose outputs may be used outside

    def roots(self) -> tuple[str, ...]:
        if self.root_ops:
            return self.root_ops
        if isinstance(self.pattern, Op):
            return self.pattern.ops
        if isinstance(self.pattern, Flat):
            return (self.pattern.op,)
        raise ValueError(f"rule {self.name}: give root_ops for a procedural pattern")


def outside_consumer(graph: Graph, m: Match, root: Node, keep: set[int] = frozenset()) -> str | None:
    """Why the match may not be fused away: an intermediate read outside the match (or a graph output)."""
    covered = {id(n) for n in m.covered}
    for node in m.covered:
        if node is root or id(node) in keep:
            continue
        for o in node.outputs:
            if graph.is_output(o):
                return f"intermediate {o.name!r} ({node.op_type}) is a graph output"
            for u in o.users:
                if id(u) not in covered:
                    return f"intermediate {o.name!r} ({node.op_type}) is also used by {u.name!r} ({u.op_type})"
    return None


def emit(graph: Graph, m: Match, root: Node, op: str, inputs: list[Value | None], attrs: dict,
         replaces: list[Value], name: str | None = None) -> Node:
    """Insert one eet-domain node before `root`; its outputs take over the uses of `replaces`."""
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    outs = [graph.value(f"{op.lower()}_out", old.dtype, old.shape) for old in replaces]
    node = graph.add_node(op, inputs, outs, attrs, domain="eet", name=name or graph.fresh_name(op), before=root)
    for old, new in zip(replaces, outs):
        graph.replace_all_uses(old, new)
        if graph.is_output(new):
            _take_name(graph, old, new)
    return node


def _take_name(graph: Graph, old: Value, new: Value) -> None:
    """A fused value that became a graph output keeps the public name of the one it replaces."""
    graph.values.pop(new.name, None)
    graph.values.pop(old.name, None)
    old.name = graph.fresh_name(old.name)
    graph.values[old.name] = old
    new.name = old.name.rsplit("__", 1)[0]
    graph.values[new.name] = new
