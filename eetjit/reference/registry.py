"""Registry of NumPy reference kernels for plain ONNX ops (and the `eet` fused ops).

A kernel is bound to (domain, op_type) and called as ``kernel(inputs, attrs, opset) -> list[np.ndarray]``:
``inputs`` are NumPy arrays (``None`` for an omitted optional input), ``attrs`` a dict of Python values
(int, float, str, list, np.ndarray for tensor attributes), ``opset`` the model's opset for that domain.
The math itself lives in a plain function beside the binding, as in the onnx reference evaluator.
"""
from __future__ import annotations

from typing import Any, Callable


Kernel = Callable[[list, dict, int], list]
OPS: dict[tuple[str, str], Kernel] = {}


def register(op_type: str, domain: str = "") -> Callable[[Kernel], Kernel]:
    def deco(fn: Kernel) -> Kernel:
        OPS[(domain, op_type)] = fn
        return fn
    return deco


def lookup(domain: str, op_type: str) -> Kernel | None:
    if domain == "ai.onnx":
        domain = ""
    return OPS.get((domain, op_type))


def attr(attrs: dict[str, Any], name: str, default: Any = None) -> Any:
    return attrs.get(name, default)
