"""Cleanup pass: same graph semantics, fewer nodes.

Folds nodes whose inputs are all constants (with the reference kernels, so folding means exactly what
running would), folds `Shape` of statically shaped values, removes Identity, inference-mode Dropout and
Casts to the type a value already has, then drops dead nodes.
"""
from __future__ import annotations

import os

import numpy as np

from eetjit.ir import Graph, Node, Value

FOLD_LIMIT = 1 << 24  # elements; a folded constant bigger than this stays a computation
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def cleanup(graph: Graph) -> Graph:
    """Run all cleanup steps to a fixed point. `EETJIT_DUMP_GRAPHS=1` prints the graph after it."""
    changed = True
    while changed:
        changed = False
        changed |= _fold_constants(graph) > 0
        changed |= _remove_passthrough(graph) > 0
        changed |= graph.remove_dead() > 0
    if os.environ.get("EETJIT_DUMP_GRAPHS"):
        print(f"--- after cleanup ---\n{graph}")
    return graph


def _static_shape(v: Value | None):
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return v.shape


def _fold_constants(graph: Graph) -> int:
    from eetjit.reference.executor import run_node
    folded = 0
    for node in list(graph.nodes):
        if node.domain not in ("",) or node.op_type in _NOT_FOLDED:
            continue
        if node.op_type == "Shape" and node.inputs and _static_shape(node.inputs[0]) is not None:
            shape = np.array(_static_shape(node.inputs[0]), np.int64)
            start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
            outs = [shape[start:end]]
        elif node.op_type == "Size" and node.inputs and _static_shape(node.inputs[0]) is not None:
            outs = [np.array(int(np.prod(_static_shape(node.inputs[0]))), np.int64)]
        elif node.inputs and all(v is None or v.is_const for v in node.inputs):
            try:
                outs = run_node(node, [None if v is None else v.const for v in node.inputs], graph)
            except Exception:
                continue  # leave it to fail (with a good message) at run time
        else:
            continue
        if any(np.asarray(o).size > FOLD_LIMIT for o in outs):
            continue
        for v, arr in zip(node.outputs, outs):
            arr = np.asarray(arr)
            v.const, v.dtype, v.shape = arr, arr.dtype, tuple(arr.shape)
        graph.remove_node(node)
        folded += 1
    return folded


def _passthrough_input(node: Node) -> Value | None:
    """The input a node merely forwards, or None."""
    if node.domain != "":
        return None
    if node.op_type == "Identity":
        return node.inputs[0]
    if node.op_type == "Dropout":
        if len(node.outputs) > 1 and node.outputs[1].users:
            return None
        training = node.input(2)
        if training is not None and not (training.is_const and not bool(training.const)):
            return None
        return node.inputs[0]
    if node.op_type == "Cast":
        src = node.inputs[0]
        to = node.attrs.get("to")
        from eetjit.frontend.convert import np_dtype
        if src is not None and src.dtype is not None and to is not None and np_dtype(to) == src.dtype:
            return src
    return None


def _remove_passthrough(graph: Graph) -> int:
    removed = 0
    for node in list(graph.nodes):
        src = _passthrough_input(node)
        if src is None:
            continue
        out = node.outputs[0]
        if graph.is_output(out) and (graph.is_output(src) or src in graph.inputs or src.producer is None):
            continue  # the output name must survive and there is no producer to rename
        graph.replace_all_uses(out, src)
        if any(o is src for o in graph.outputs) and src.producer is not None and not src.is_const:
            # keep the graph output's public name
            del graph.values[src.name]
            graph.values.pop(out.name, None)
            src.name = out.name
            graph.values[src.name] = src
        graph.remove_node(node)
        removed += 1
    return removed
