"""ONNX ModelProto (external data already loaded, functions inlined, shapes inferred) → Graph IR."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from eetjit.errors import ModelError
from eetjit.ir import Graph, Value


def np_dtype(elem_type: int) -> np.dtype | None:
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def _type_of(vi: onnx.ValueInfoProto):
    t = vi.type
    if not t.HasField("tensor_type"):
        return None, None
    tt = t.tensor_type
    dtype = np_dtype(tt.elem_type)
    if not tt.HasField("shape"):
        return dtype, None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dtype, tuple(dims)


def tensor_to_array(t: onnx.TensorProto, where: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"{where}: tensor {t.name!r} cannot be decoded ({e})") from None


def attr_value(a: onnx.AttributeProto, where: str):
    T = onnx.AttributeProto
    if a.type == T.FLOAT:
        return float(a.f)
    if a.type == T.INT:
        return int(a.i)
    if a.type == T.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == T.TENSOR:
        return tensor_to_array(a.t, where)
    if a.type == T.FLOATS:
        return [float(x) for x in a.floats]
    if a.type == T.INTS:
        return [int(x) for x in a.ints]
    if a.type == T.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if a.type == T.TENSORS:
        return [tensor_to_array(t, where) for t in a.tensors]
    if a.type in (T.GRAPH, T.GRAPHS):
        return a.g if a.type == T.GRAPH else list(a.graphs)
    raise ModelError(f"{where}: attribute {a.name!r} has unsupported type {a.type}")


_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _constant_array(node: onnx.NodeProto, where: str) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return tensor_to_array(a.t, where)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


def _weight(t: onnx.TensorProto, weights: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """The array the loader cut out of the file for initializer `t` (see loader._split_raw_data), if any."""
    if not weights or t.HasField("raw_data") or t.data_location != onnx.TensorProto.DEFAULT:
        return None
    arr = weights.get(t.name)
    if arr is None or arr.shape != tuple(t.dims) or arr.dtype != np_dtype(t.data_type):
        return None
    return arr


def to_graph(model: onnx.ModelProto, source: str = "model", weights: dict[str, np.ndarray] | None = None) -> Graph:
    """The Graph of `model`; `weights`: initializer arrays the loader read without protobuf, by name."""
    g = model.graph
    opsets = {(imp.domain if imp.domain != "ai.onnx" else ""): int(imp.version) for imp in model.opset_import}
    graph = Graph(g.name or "graph", opsets)
    graph.metadata = {"source": source, "producer": f"{model.producer_name} {model.producer_version}".strip(),
                      "ir_version": int(model.ir_version)}

    types: dict[str, tuple] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        types[vi.name] = _type_of(vi)

    def new_value(name: str) -> Value:
        if name in graph.values:
            raise ModelError(f"{source}: value {name!r} is defined twice (not in SSA form)")
        dtype, shape = types.get(name, (None, None))
        return graph.value(name, dtype, shape)

    init_names = set()
    for t in g.initializer:
        if t.name in graph.values:
            raise ModelError(f"{source}: initializer {t.name!r} is defined twice")
        arr = _weight(t, weights)
        graph.value(t.name, const=tensor_to_array(t, source) if arr is None else arr)
        init_names.add(t.name)
    for vi in g.input:
        if vi.name in init_names:
            continue  # an input with a default (old exports): treat as a weight
        graph.inputs.append(new_value(vi.name))

    pending: list[tuple[onnx.NodeProto, str]] = []
    for i, node in enumerate(g.node):
        where = f"{source}: node {node.name or i!r} ({node.op_type})"
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            arr = _constant_array(node, where)
            if arr is None:
                raise ModelError(f"{where}: Constant without a supported value attribute")
            if node.output[0] in graph.values:
                raise ModelError(f"{source}: value {node.output[0]!r} is defined twice (not in SSA form)")
            graph.value(node.output[0], const=arr)
            continue
        for o in node.output:
            if o:
                new_value(o)
        pending.append((node, where))

    for node, where in pending:
        inputs = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            v = graph.values.get(name)
            if v is None:
                raise ModelError(f"{where}: input {name!r} is produced by no node, initializer or graph input")
            inputs.append(v)
        outputs = []
        for o in node.output:
            outputs.append(graph.values[o] if o else graph.value(graph.fresh_name("unused")))
        attrs = {a.name: attr_value(a, where) for a in node.attribute}
        domain = node.domain if node.domain != "ai.onnx" else ""
        if domain and domain not in opsets:
            opsets.setdefault(domain, 1)
        graph.add_node(node.op_type, inputs, outputs, attrs, domain, node.name or graph.fresh_name(node.op_type))

    for vi in g.output:
        v = graph.values.get(vi.name)
        if v is None:
            raise ModelError(f"{source}: graph output {vi.name!r} is produced by nothing")
        graph.outputs.append(v)
    try:
        graph.toposort()
    except ValueError as e:
        raise ModelError(f"{source}: {e}") from None
    return graph
