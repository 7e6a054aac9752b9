"""The pattern language: ONNX-op vocabulary, matched backwards from a root value with backtracking.

    x = Var("x")
    mean = Op("ReduceMean", x, name="mean")
    d = Op("Sub", x, mean)
    ...
    pattern = Op("Add", Flat("Mul", d_over_std, Var("gamma")), Var("beta"), name="root")

What export flavours vary is absorbed here, once, instead of in every rule:
- operand order: binary ops in COMMUTATIVE try both orders;
- association: `Flat("Mul", a, b, c)` matches any tree of single-use Mul nodes whose leaves are a, b, c in any
  order (so `0.5*x*(1+t)` and `x*(0.5*(1+t))` are one pattern); same for Add;
- optional wrappers: `Skip(("Cast",), p)` matches p or Cast(p);
- alternatives: `Either(p1, p2)`;
- constants: `Const("c")` binds any constant value, and the rule's check compares it with tolerance
  (`near`), so that a near miss can say which constant was off instead of silently not matching.
Attributes/inputs that differ by opset (axes as attribute or input) are read through `axes_of`.
A match yields a `Match`: bound values and nodes by name, and the set of nodes the pattern covered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from eetjit.ir import Node, Value

COMMUTATIVE = {"Add", "Mul", "And", "Or", "Equal", "Max", "Min", "Xor"}


@dataclass
class Match:
    values: dict[str, Value] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    covered: list[Node] = field(default_factory=list)  # every node an Op pattern matched (to be fused away)

    def __getitem__(self, name: str):
        if name in self.values:
            return self.values[name]
        return self.nodes[name]

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def const(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return None if v is None else v.const

    def copy(self) -> "Match":
        return Match(dict(self.values), dict(self.nodes), list(self.covered))


class Pat:
    def match(self, v: Value | None, m: Match) -> Iterator[Match]:
        raise NotImplementedError


class Var(Pat):
    """Any value (not an omitted input). The same name must bind the same value everywhere."""

    def __init__(self, name: str, pred: Callable[[Value], bool] | None = None):
        self.name, self.pred = name, pred

    def match(self, v, m):
        if v is None or (self.pred is not None and not self.pred(v)):
            return
        bound = m.values.get(self.name)
        if bound is not None:
            if bound is v:
                yield m
            return
        m2 = m.copy()
        m2.values[self.name] = v
        yield m2


class Const(Var):
    """A constant value (initializer or folded)."""

    def __init__(self, name: str, pred: Callable[[np.ndarray], bool] | None = None):
        super().__init__(name, lambda v: v.is_const and (pred is None or bool(pred(v.const))))


class Op(Pat):
    """A node of `op_type` (a name or a tuple of names) producing the matched value at output `out`.
    `inputs` match the node's leading inputs; extra trailing inputs are allowed only with `partial=True`.
    `attrs` maps attribute names to required values or predicates."""

    def __init__(self, op_type, *inputs: Pat, name: str | None = None, out: int = 0, partial: bool = False,
                 attrs: dict[str, Any] | None = None, domain: str = ""):
        self.ops = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.inputs, self.name, self.out, self.partial = list(inputs), name, out, partial
        self.attrs, self.domain = attrs or {}, domain

    def _node_ok(self, node: Node) -> bool:
        if node.op_type not in self.ops or node.domain != self.domain:
            return False
        n_in = len([v for v in node.inputs])
        if n_in < len(self.inputs) or (n_in > len(self.inputs) and not self.partial
                                       and any(v is not None for v in node.inputs[len(self.inputs):])):
            return False
        for key, want in self.attrs.items():
            have = node.attrs.get(key)
            if callable(want):
                if not want(have):
                    return False
            elif have != want:
                return False
        return True

    def match(self, v, m):
        if v is None or v.producer is None:
            return
        node = v.producer
        if node.outputs.index(v) != self.out or not self._node_ok(node):
            return
        if self.name is not None and self.name in m.nodes and m.nodes[self.name] is not node:
            return
        orders = [self.inputs]
        if node.op_type in COMMUTATIVE and len(self.inputs) == 2:
            orders.append(self.inputs[::-1])
        for order in orders:
            m0 = m.copy()
            if self.name is not None:
                m0.nodes[self.name] = node
            if node not in m0.covered:
                m0.covered.append(node)
            yield from _match_seq(order, node.inputs, m0)


def _match_seq(pats, values, m) -> Iterator[Match]:
    if not pats:
        yield m
        return
    for m1 in pats[0].match(values[0], m):
        yield from _match_seq(pats[1:], values[1:], m1)


class Either(Pat):
    def __init__(self, *alternatives: Pat):
        self.alternatives = alternatives

    def match(self, v, m):
        for p in self.alternatives:
            yield from p.match(v, m)


class Skip(Pat):
    """`inner`, optionally wrapped in one of `ops` (single-input pass-through ops such as Cast)."""

    def __init__(self, ops, inner: Pat):
        self.ops = (ops,) if isinstance(ops, str) else tuple(ops)
        self.inner = inner

    def match(self, v, m):
        yield from self.inner.match(v, m)
        if v is not None and v.producer is not None and v.producer.op_type in self.ops and v.producer.inputs:
            m2 = m.copy()
            m2.covered.append(v.producer)
            yield from self.match(v.producer.inputs[0], m2)


class Flat(Pat):
    """An associative-commutative chain of `op_type` (Add or Mul) with the given operand patterns."""

    def __init__(self, op_type: str, *operands: Pat, name: str | None = None):
        self.op, self.operands, self.name = op_type, list(operands), name

    def _leaves(self, v: Value, top: bool) -> list[tuple[list[Value], list[Node]]]:
        """All ways to read v as a flattened chain: (leaves, chain nodes). Inner chain nodes must be single-use."""
        ways = [([v], [])] if not top else []
        node = v.producer
        if node is None or node.op_type != self.op or node.domain != "" or len(node.inputs) != 2:
            return ways
        if not top and len(v.users) != 1:
            return ways
        for la, na in self._leaves(node.inputs[0], False):
            for lb, nb in self._leaves(node.inputs[1], False):
                ways.append((la + lb, [node] + na + nb))
        return ways

    def match(self, v, m):
        if v is None:
            return
        for leaves, chain in self._leaves(v, True):
            if len(leaves) != len(self.operands):
                continue
            m0 = m.copy()
            if self.name is not None:
                m0.nodes[self.name] = chain[0]
            m0.covered.extend(n for n in chain if n not in m0.covered)
            yield from _match_perm(self.operands, leaves, m0)


def _match_perm(pats, leaves, m) -> Iterator[Match]:
    if not pats:
        yield m
        return
    for i, leaf in enumerate(leaves):
        for m1 in pats[0].match(leaf, m):
            yield from _match_perm(pats[1:], leaves[:i] + leaves[i + 1:], m1)


# --- helpers rules use in their checks -------------------------------------------------------------------

def near(arr, target: float, rtol: float = 1e-3) -> bool:
    """A constant equal (within float32 rounding and `rtol`) to `target` everywhere."""
    if arr is None:
        return False
    a = np.asarray(arr, dtype=np.float64)
    return a.size > 0 and bool(np.all(np.abs(a - target) <= rtol * max(abs(target), 1e-12) + 1e-7))


def scalar(arr) -> float | None:
    """The single value of a constant that holds one distinct value (any shape), else None."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.size == 0:
        return None
    flat = a.reshape(-1)
    if flat.size > 1 and not np.all(flat == flat[0]):
        return None
    return float(flat[0])


def axes_of(node: Node, input_index: int = 1) -> list[int] | None:
    """Reduction/unsqueeze axes from the attribute (old opsets) or the constant input (new opsets)."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    v = node.input(input_index)
    if v is not None and v.is_const:
        return [int(a) for a in np.asarray(v.const).reshape(-1)]
    return None


def last_axis(node: Node, axes: list[int] | None, rank: int | None) -> bool:
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)
