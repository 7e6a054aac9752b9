"""The reference executor: runs any Graph node by node with the NumPy kernels of `eetjit.reference.ops`.

It is the fallback for ops no rule fuses and the oracle fused kernels are tested against.
"""
from __future__ import annotations

import numpy as np

from eetjit.errors import ExecutionError, ModelError
from eetjit.ir import Graph, Node
from eetjit.reference import registry


def _kernels_loaded():
    import eetjit.fused  # noqa: F401  (registers the eet-domain ops)
    import eetjit.reference.ops  # noqa: F401  (registers every ONNX op)


def kernel_for(node: Node, graph: Graph | None = None):
    _kernels_loaded()
    k = registry.lookup(node.domain, node.op_type)
    if k is None:
        dom = node.domain or "ai.onnx"
        raise ModelError(f"no kernel for op {dom}.{node.op_type} (node {node.name!r}); eetjit cannot run this model")
    return k


def run_node(node: Node, inputs: list, graph: Graph | None = None) -> list[np.ndarray]:
    kernel = kernel_for(node, graph)
    opset = graph.opset(node.domain) if graph is not None else 0
    attrs = node.attrs
    if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
        attrs = {**attrs, "_num_outputs": len(node.outputs)}  # equal parts: the kernel cannot see the node
    outs = kernel(inputs, attrs, opset)
    return [np.asarray(o) for o in outs]


def check_supported(graph: Graph) -> None:
    """Raise ModelError naming every op the graph uses that has no kernel."""
    _kernels_loaded()
    missing = sorted({(n.domain or "ai.onnx") + "." + n.op_type for n in graph.nodes
                      if registry.lookup(n.domain, n.op_type) is None})
    if missing:
        raise ModelError(f"no kernel for op(s) {', '.join(missing)}; eetjit cannot run this model")


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], output_names=None) -> list[np.ndarray]:
    """Run `graph` on validated `feeds`; returns the requested outputs (all by default) in order."""
    env: dict[int, np.ndarray] = {}
    for v in graph.values.values():
        if v.is_const:
            env[id(v)] = v.const
    for v in graph.inputs:
        env[id(v)] = feeds[v.name]
    wanted = graph.outputs if output_names is None else [_output(graph, n) for n in output_names]
    keep = {id(v) for v in wanted}
    remaining = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None:
                remaining[id(v)] = remaining.get(id(v), 0) + 1
    for node in graph.nodes:
        args = [None if v is None else env[id(v)] for v in node.inputs]
        try:
            outs = run_node(node, args, graph)
        except (ModelError, ExecutionError):
            raise
        except Exception as e:
            shapes = ", ".join("None" if a is None else f"{a.dtype}{list(a.shape)}" for a in args)
            raise ExecutionError(f"node {node.name!r} ({node.op_type}) failed on inputs ({shapes}): {e}") from e
        for v, arr in zip(node.outputs, outs):
            env[id(v)] = arr
        for v in node.inputs:  # free what no later node reads
            if v is not None and not v.is_const:
                remaining[id(v)] -= 1
                if remaining[id(v)] == 0 and id(v) not in keep:
                    env.pop(id(v), None)
    return [env[id(v)] for v in wanted]


def _output(graph: Graph, name: str):
    for v in graph.outputs:
        if v.name == name:
            return v
    from eetjit.errors import InputError
    raise InputError(f"unknown output name {name!r}; the model's outputs are {[v.name for v in graph.outputs]}")
