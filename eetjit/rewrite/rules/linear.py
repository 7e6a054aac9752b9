"""Linear: a GEMM against a constant weight → eet.Linear(x[..., K], W[K, N], bias[N]?).

Small rules that compose (the driver runs the table to a fixed point), so every export flavour ends as one
eet.Linear without a rule per combination:
    MatMul(x, W)                                        → Linear(x, W)
    Gemm(x, B, C; alpha, beta, transB)                  → Linear(x, alpha·B or alpha·Bᵀ, beta·C)
    Add(Linear(x, W), bias)                             → Linear(x, W, bias)     bias [N], or broadcastable to it
    Reshape(Linear(Reshape(x, [-1, K]), ...), [..., N]) → Linear(x, ...)         TorchScript Conv1D / addmm wrapper
                                                                                (or Flatten(x, axis=-1) inside)
The wrapper rule proves that the two Reshapes only flatten and restore x's leading dims, reading the reshape
targets symbolically (`shape_vector`: Shape/Gather/Slice/Squeeze/Unsqueeze/Concat of known or symbolic
dims) or, failing that, from the inferred output shape. Activation epilogues, the QKV split/merge and SwiGLU
refine these Linears afterwards (activation.py, qkv.py, swiglu.py).
Lowers to templates/*/linear_epilogue.py.j2 (a BLAS/cuBLASLt GEMM plus the bias/activation epilogue).
"""
from __future__ import annotations

import numpy as np

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.pattern import Const, Either, Match, Op, Var
from eetjit.rewrite.rule import Rule, emit

TEMPLATE = "linear_epilogue"


# --- helpers shared by the projection rules (activation, qkv, swiglu import these) ---------------------------

def is_linear(node: Node | None, *, plain: bool = False) -> bool:
    """An eet.Linear; `plain`: no activation and no split (so its one output is exactly x W + b)."""
    if node is None or node.domain != "eet" or node.op_type != "Linear":
        return False
    if plain:
        return (node.attrs.get("activation") or "none") == "none" and not node.attrs.get("split")
    return True


def drop_dead(graph: Graph, nodes) -> None:
    """Remove the matched nodes that nothing reads any more (latest first), so that later roots in the same
    driver pass do not see a half-rewritten chain. Whatever is still used stays."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    for node in sorted({id(n): n for n in nodes}.values(), key=lambda n: -order.get(id(n), -1)):
        if id(node) in order and all(not o.users and not graph.is_output(o) for o in node.outputs):
            graph.remove_node(node)


def slice_params(node: Node) -> tuple[list[int], list[int], list[int] | None, list[int] | None] | None:
    """(starts, ends, axes, steps) of a Slice whose parameters are constants (inputs, or attributes before
    opset 10); None otherwise."""
    if len(node.inputs) > 1:
        parts = [node.input(i) for i in range(1, 5)]
        if parts[0] is None or parts[1] is None or any(p is not None and not p.is_const for p in parts):
            return None
        starts, ends, axes, steps = [None if p is None else [int(a) for a in np.asarray(p.const).reshape(-1)]
                                     for p in parts]
    else:
        starts, ends, axes, steps = node.attrs.get("starts"), node.attrs.get("ends"), node.attrs.get("axes"), None
    if not starts or not ends or len(starts) != len(ends):
        return None
    return list(starts), list(ends), None if axes is None else list(axes), steps


def _bias_N(bias: np.ndarray, N: int, out_rank: int | None) -> tuple[np.ndarray | None, str | None]:
    """`bias` as a 1-D [N] array when adding it to a [..., N] output is exactly a per-column bias."""
    if bias.ndim > 1 and any(d != 1 for d in bias.shape[:-1]):
        return None, f"bias of shape {list(bias.shape)} is not [N={N}] (it varies along a leading dim)"
    if bias.ndim >= 1 and bias.shape[-1] not in (1, N):
        return None, f"bias of shape {list(bias.shape)} does not broadcast to [N={N}]"
    if bias.ndim > 1:
        if out_rank is None:
            return None, f"bias of shape {list(bias.shape)} may add dims to an output of unknown rank"
        if bias.ndim > out_rank:
            return None, f"bias of shape {list(bias.shape)} broadcasts the rank-{out_rank} output to rank {bias.ndim}"
    return np.ascontiguousarray(np.broadcast_to(bias.reshape(-1) if bias.ndim else bias, (N,))), None


def _const_value(graph: Graph, original: Value, arr: np.ndarray, suffix: str) -> Value:
    """`original` itself when `arr` is its constant unchanged, else a new initializer named after it."""
    if original.const is arr or (original.const.shape == arr.shape and original.const.dtype == arr.dtype
                                 and np.array_equal(original.const, arr)):
        return original
    return graph.constant(np.ascontiguousarray(arr), name=f"{original.name}_{suffix}")


# --- MatMul(x, W) ---------------------------------------------------------------------------------------------

def _matmul_pattern():
    # Integer MatMuls (index arithmetic) are not projections: the float test is part of the pattern.
    return Op("MatMul", Var("x", lambda v: not v.is_const), Const("W", lambda a: a.dtype.kind == "f"), name="root")


def check_matmul(graph: Graph, m: Match) -> str | None:
    W = m.const("W")
    if W.ndim != 2:
        return f"MatMul weight {m['W'].name!r} has shape {list(W.shape)}, not [K, N]"
    x = m["x"]
    if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != W.shape[0]:
        return f"x has {x.shape[-1]} features but the weight has K={W.shape[0]} rows"
    return None


def rewrite_matmul(graph: Graph, m: Match) -> None:
    root = m["root"]
    emit(graph, m, root, "Linear", [m["x"], m["W"]], {"activation": "none"}, [root.outputs[0]])
    drop_dead(graph, m.covered)


# --- Gemm(x, B, C) ----------------------------------------------------------------------------------------------

def _gemm_pattern():
    return Op("Gemm", Var("x", lambda v: not v.is_const), Const("B", lambda a: a.dtype.kind == "f"), name="root",
              partial=True)


def check_gemm(graph: Graph, m: Match) -> str | None:
    root, B = m["root"], m.const("B")
    if root.attrs.get("transA", 0):
        return "Gemm transposes its activation input (transA=1); x must be [M, K]"
    if B.ndim != 2:
        return f"Gemm weight {m['B'].name!r} has shape {list(B.shape)}, not 2-D"
    C = root.input(2)
    if C is not None:
        if not C.is_const:
            return f"Gemm's C input {C.name!r} is not a constant bias"
        N = B.shape[0] if root.attrs.get("transB", 0) else B.shape[1]
        _, why = _bias_N(C.const, N, 2)
        if why:
            return f"Gemm C: {why}"
    return None


def rewrite_gemm(graph: Graph, m: Match) -> None:
    root, B = m["root"], m["B"]
    alpha, beta = float(root.attrs.get("alpha", 1.0)), float(root.attrs.get("beta", 1.0))
    W_KN = B.const.T if root.attrs.get("transB", 0) else B.const
    if alpha != 1.0:
        W_KN = (W_KN * alpha).astype(B.const.dtype)
    inputs = [m["x"], _const_value(graph, B, np.ascontiguousarray(W_KN), "KN")]
    C = root.input(2)
    if C is not None:
        bias_N, _ = _bias_N(C.const, W_KN.shape[1], 2)
        if beta != 1.0:
            bias_N = (bias_N * beta).astype(C.const.dtype)
        inputs.append(_const_value(graph, C, bias_N, "N"))
    emit(graph, m, root, "Linear", inputs, {"activation": "none"}, [root.outputs[0]])
    drop_dead(graph, m.covered)


# --- Add(Linear(x, W), bias) ------------------------------------------------------------------------------------

def _bias_pattern():
    lin = Op("Linear", Var("x"), Const("W"), name="lin", domain="eet",
             attrs={"activation": lambda a: (a or "none") == "none", "split": lambda s: not s})
    return Op("Add", lin, Const("bias"), name="root")


def check_bias(graph: Graph, m: Match) -> str | None:
    W, bias, lin = m.const("W"), m.const("bias"), m["lin"]
    if bias.dtype != W.dtype:
        return f"bias {m['bias'].name!r} is {bias.dtype}, the weight {W.dtype}"
    y = lin.outputs[0]
    rank = y.rank if y.rank is not None else m["x"].rank
    _, why = _bias_N(bias, W.shape[1], rank)
    return why


def rewrite_bias(graph: Graph, m: Match) -> None:
    root, lin = m["root"], m["lin"]
    y = lin.outputs[0]
    bias_N, _ = _bias_N(m.const("bias"), m.const("W").shape[1], y.rank if y.rank is not None else m["x"].rank)
    inputs = [m["x"], m["W"], _const_value(graph, m["bias"], bias_N, "N")]
    emit(graph, m, root, "Linear", inputs, dict(lin.attrs), [root.outputs[0]])
    drop_dead(graph, m.covered)


# --- Reshape(Linear(Reshape(x, [-1, K])), [..., N]) ----------------------------------------------------------

def dim_key(v: Value, i: int):
    """A comparable name for dim i of v: an int when static, the symbol when named, else (value, i)."""
    if v.shape is not None and -len(v.shape) <= i < len(v.shape):
        d = v.shape[i]
        if isinstance(d, int):
            return d
        if isinstance(d, str):
            return ("sym", d)
        i = i % len(v.shape)
    return ("dim", id(v), i)


class _Vec:
    """A symbolic int64 shape tensor: `items` are dims (see dim_key); rank 0 (one item) or rank 1."""

    def __init__(self, items: list, rank: int = 1):
        self.items, self.rank = list(items), rank


def shape_vector(v: Value | None, depth: int = 0) -> _Vec | None:
    """Evaluate the shape arithmetic exporters write for reshape targets (TorchScript's
    Shape/Gather/Unsqueeze/Concat chains, Shape with start/end), keeping unknown dims symbolic."""
    if v is None or depth > 16:
        return None
    if v.is_const:
        a = np.asarray(v.const)
        if a.dtype.kind not in "iu" or a.ndim > 1:
            return None
        return _Vec([int(d) for d in a.reshape(-1)], a.ndim)
    node = v.producer
    if node is None or node.domain != "":
        return None
    op = node.op_type
    if op == "Shape":
        src = node.inputs[0]
        if src.rank is None:
            return None
        r = src.rank
        start, end = node.attrs.get("start", 0), node.attrs.get("end", r)
        start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
        return _Vec([dim_key(src, i) for i in range(max(0, start), min(r, end))])
    if op in ("Cast", "Identity"):
        return shape_vector(node.inputs[0], depth + 1)
    if op == "Gather":
        data, idx = shape_vector(node.inputs[0], depth + 1), node.input(1)
        if data is None or data.rank != 1 or idx is None or not idx.is_const or node.attrs.get("axis", 0) != 0:
            return None
        ids = np.asarray(idx.const)
        try:
            picked = [data.items[int(i)] for i in ids.reshape(-1)]
        except IndexError:
            return None
        return _Vec(picked, ids.ndim)
    if op == "Slice":
        data = shape_vector(node.inputs[0], depth + 1)
        if data is None or data.rank != 1:
            return None
        params = slice_params(node)
        if params is None:
            return None
        starts, ends, axes, steps = params
        if len(starts) != 1 or (axes not in (None, [0], [-1])) or (steps not in (None, [1])):
            return None
        n = len(data.items)
        s, e = starts[0], ends[0]
        s, e = (s + n if s < 0 else s), (e + n if e < 0 else e)
        return _Vec(data.items[max(0, min(s, n)):max(0, min(e, n))])
    if op == "Squeeze":
        data = shape_vector(node.inputs[0], depth + 1)
        return _Vec(data.items, 0) if data is not None and len(data.items) == 1 else None
    if op == "Unsqueeze":
        data = shape_vector(node.inputs[0], depth + 1)
        return _Vec(data.items, 1) if data is not None and data.rank == 0 else None
    if op == "Reshape":
        data = shape_vector(node.inputs[0], depth + 1)
        target = node.input(1)
        if data is None or target is None or not target.is_const:
            return None
        t = [int(d) for d in np.asarray(target.const).reshape(-1)]
        if t in ([-1], [len(data.items)]):
            return _Vec(data.items, 1)
        if t == [] and len(data.items) == 1:
            return _Vec(data.items, 0)
        return None
    if op == "Concat":
        items = []
        for i in node.inputs:
            part = shape_vector(i, depth + 1)
            if part is None or part.rank != 1:
                return None
            items.extend(part.items)
        return _Vec(items)
    return None


def _fmt(d) -> str:
    if isinstance(d, int):
        return str(d)
    return d[1] if d[0] == "sym" else f"dim{d[2]}"


def _flattens(x: Value, target: _Vec | None, K: int, allowzero: int) -> str | None:
    """Why Reshape(x, target) is not [prod(x.shape[:-1]), K] (None if it is)."""
    if target is None or target.rank != 1:
        return "the flattening reshape's target is not a shape vector eetjit can evaluate"
    t = target.items
    if len(t) != 2:
        return f"the flattening reshape targets rank {len(t)}, not [-1, K]"
    lead, last = t
    if last != K and last != dim_key(x, -1):
        return f"the flattening reshape's last dim is {_fmt(last)}, not K={K}"
    if x.rank is not None and x.rank >= 1 and isinstance(x.shape[-1], int) and x.shape[-1] != K:
        return f"x has {x.shape[-1]} features, the weight K={K}"
    if lead == -1:
        return None
    if x.rank == 2 and (lead == dim_key(x, 0) or (lead == 0 and not allowzero)):
        return None
    return f"the flattening reshape's first dim is {_fmt(lead)}, not -1"


def _restores(x: Value, y: Value, target: _Vec | None, N: int, y2d: Value, allowzero: int) -> str | None:
    """Why Reshape(y2d[M, N], target) is not x.shape[:-1] + [N] (None if it is)."""
    r = x.rank
    if r is None:
        return "x has unknown rank; cannot tell that the reshapes only flatten its leading dims"
    want = [dim_key(x, i) for i in range(r - 1)] + [N]
    if target is not None and target.rank == 1 and len(target.items) == r:
        t = list(target.items)
        if t[-1] == dim_key(y2d, -1):
            t[-1] = N
        if t[-1] != N:
            return f"the restoring reshape's last dim is {_fmt(t[-1])}, not N={N}"
        if not allowzero:
            t = [dim_key(y2d, 0) if (d == 0 and i == 0) else d for i, d in enumerate(t)]
        free = [i for i, d in enumerate(t) if d != want[i]]
        # One -1 among otherwise matching dims resolves to the missing one (the element count is the same).
        if not free or (len(free) == 1 and t[free[0]] == -1):
            return None
    if y.shape is not None and len(y.shape) == r and all(dim_key(y, i) == want[i] for i in range(r)):
        return None  # shape inference already proved the restored shape
    shown = "?" if target is None else "[" + ", ".join(_fmt(d) for d in target.items) + "]"
    return f"the restoring reshape's target {shown} is not x's leading dims + [N={N}]"


def _wrapper_pattern():
    flat = Either(Op("Reshape", Var("x"), Var("t_flat"), name="flat"), Op("Flatten", Var("x"), name="flat"))
    lin = Op("Linear", flat, Const("W"), name="lin", domain="eet", partial=True,
             attrs={"split": lambda s: not s})
    return Op("Reshape", lin, Var("t_back"), name="root")


def check_wrapper(graph: Graph, m: Match) -> str | None:
    x, W, root, flat = m["x"], m.const("W"), m["root"], m["flat"]
    K, N = W.shape
    if flat.op_type == "Flatten":
        axis = flat.attrs.get("axis", 1)
        if not (axis == -1 or (x.rank is not None and axis == x.rank - 1)):
            return f"Flatten at axis {axis}, not the last axis of x (rank {x.rank})"
        why = None if not (x.rank and isinstance(x.shape[-1], int) and x.shape[-1] != K) else \
            f"x has {x.shape[-1]} features, the weight K={K}"
    else:
        why = _flattens(x, shape_vector(m["t_flat"]), K, flat.attrs.get("allowzero", 0))
    if why:
        return why
    return _restores(x, root.outputs[0], shape_vector(m["t_back"]), N, m["lin"].outputs[0],
                     root.attrs.get("allowzero", 0))


def rewrite_wrapper(graph: Graph, m: Match) -> None:
    root, lin = m["root"], m["lin"]
    emit(graph, m, root, "Linear", [m["x"]] + list(lin.inputs[1:]), dict(lin.attrs), [root.outputs[0]])
    drop_dead(graph, m.covered)


RULES = [
    Rule("Linear/Gemm", "Linear", _gemm_pattern(), check_gemm, rewrite_gemm, template=TEMPLATE),
    Rule("Linear/MatMul", "Linear", _matmul_pattern(), check_matmul, rewrite_matmul, template=TEMPLATE),
    Rule("Linear/bias", "Linear", _bias_pattern(), check_bias, rewrite_bias, template=TEMPLATE),
    Rule("Linear/reshape-wrapper", "Linear", _wrapper_pattern(), check_wrapper, rewrite_wrapper,
         template=TEMPLATE),
]
