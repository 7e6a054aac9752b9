"""Reading ONNX files safely, then handing the proto to `convert` and `cleanup`.

Everything read from disk goes through here. External data is resolved by hand instead of through
`onnx.load_external_data_for_model` so that one function decides what may be opened: a relative location
that stays inside the model's folder after symlinks are resolved, a regular file, the byte range inside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from eetjit.errors import ModelError

MIN_OPSET = 11
MAX_OPSET = onnx.defs.onnx_opset_version()
MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit


def load(path, *, cleanup: bool = True):
    """Load an ONNX model into the Graph IR; raises `ModelError` on bad or hostile files.

    Steps: safe read, external data from inside the model's folder only, opset check, inline local
    functions, shape inference, conversion to the IR, then (unless `cleanup=False`) constant folding and
    removal of Identity/Dropout/no-op Cast and dead nodes.
    """
    from eetjit.frontend.convert import to_graph
    model = read_model_proto(path)
    model = _inline_and_infer(model)
    graph = to_graph(model, source=str(path))
    if cleanup:
        from eetjit.cleanup import cleanup as run_cleanup
        run_cleanup(graph)
    return graph


def read_model_proto(path) -> onnx.ModelProto:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {size} bytes is over protobuf's 2 GiB limit; keep weights as external data")
    data = path.read_bytes()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{path}: not an ONNX model or truncated protobuf ({e})") from None
    _check_structure(model, path)
    _load_external_data(model, path.resolve().parent, path)
    return model


def _check_structure(model: onnx.ModelProto, path: Path) -> None:
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"{path}: not an ONNX model (no graph in the protobuf)")
    if model.ir_version <= 0:
        raise ModelError(f"{path}: not an ONNX model (ir_version {model.ir_version})")
    if not model.opset_import:
        raise ModelError(f"{path}: no opset_import; cannot tell which ONNX operator set the graph uses")
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not (MIN_OPSET <= imp.version <= MAX_OPSET):
            raise ModelError(f"{path}: unsupported ONNX opset {imp.version} (supported {MIN_OPSET}..{MAX_OPSET})")
    if not model.graph.output:
        raise ModelError(f"{path}: graph declares no outputs")
    if model.graph.sparse_initializer:
        raise ModelError(f"{path}: sparse initializers are not supported")


def _tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: initializers and tensor attributes, in subgraphs and functions too."""
    def from_graph(g):
        yield from g.initializer
        for node in g.node:
            yield from from_nodes([node])

    def from_nodes(nodes):
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from from_graph(a.g)
                for sub in a.graphs:
                    yield from from_graph(sub)

    yield from from_graph(model.graph)
    for f in model.functions:
        yield from from_nodes(f.node)


def _safe_location(base: Path, location: str, path: Path, tensor: str) -> Path:
    """The file `location` names, or ModelError if it is not a file inside `base` (the model's folder)."""
    if not location or "\x00" in location:
        raise ModelError(f"{path}: tensor {tensor!r} has an empty or invalid external-data location")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise ModelError(f"{path}: tensor {tensor!r} external data location {location!r} is absolute; "
                         "only files inside the model's folder are read")
    if any(part == ".." for part in rel.parts) or ".." in location.replace("\\", "/").split("/"):
        raise ModelError(f"{path}: tensor {tensor!r} external data location {location!r} leaves the model's "
                         "folder ('..'); refusing to read it")
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ModelError(f"{path}: tensor {tensor!r} external data location {location!r} resolves outside the "
                         "model's folder (symlink); refusing to read it")
    if not target.exists():
        raise ModelError(f"{path}: tensor {tensor!r} external data file {location!r} is missing")
    if not target.is_file():
        raise ModelError(f"{path}: tensor {tensor!r} external data location {location!r} is not a regular file")
    return target


def _load_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    handles: dict[Path, object] = {}
    try:
        for t in _tensors(model):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            target = _safe_location(base, info.get("location", ""), path, t.name)
            try:
                offset = int(info.get("offset", 0) or 0)
                length = int(info["length"]) if info.get("length") not in (None, "") else None
            except ValueError:
                raise ModelError(f"{path}: tensor {t.name!r} has a non-integer external-data offset/length") from None
            fsize = target.stat().st_size
            expected = _expected_nbytes(t, path)
            if length is None:
                length = fsize - offset
            if offset < 0 or length < 0 or offset + length > fsize:
                raise ModelError(f"{path}: tensor {t.name!r} external data [{offset}, {offset + length}) lies outside "
                                 f"{info.get('location')!r} ({fsize} bytes); the data file is truncated or wrong")
            if expected is not None and length != expected:
                raise ModelError(f"{path}: tensor {t.name!r} needs {expected} bytes of external data, "
                                 f"the file gives {length}")
            f = handles.get(target)
            if f is None:
                f = handles[target] = open(target, "rb")
            f.seek(offset)
            t.raw_data = f.read(length)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    finally:
        for f in handles.values():
            f.close()


def _expected_nbytes(t: onnx.TensorProto, path: Path) -> int | None:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        return None
    if t.data_type in (onnx.TensorProto.STRING,):
        return None
    n = 1
    for d in t.dims:
        if d < 0:
            raise ModelError(f"{path}: tensor {t.name!r} has a negative dimension {d}")
        n *= d
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    return n * itemsize


def _inline_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.functions:
        try:
            from onnx import inliner  # not `import onnx.inliner`: that would make `onnx` local to this function
            model = inliner.inline_local_functions(model)
        except Exception as e:  # the inliner is C++; it raises plain exceptions on bad functions
            raise ModelError(f"cannot inline the model's local functions: {e}") from None
    try:
        _infer_shapes_without_weights(model)
    except Exception:
        # Shape inference is an aid (typed values, static folding), not a requirement: a graph it cannot
        # type still runs, with types discovered at run time.
        pass
    return model


# Initializers bigger than this are handed to shape inference as dims + dtype only (no data).
WEIGHT_STUB_BYTES = 1 << 12


def _infer_shapes_without_weights(model: onnx.ModelProto) -> None:
    """onnx shape inference, in place, on a copy of the model whose large float initializers carry no data.

    `infer_shapes` serializes the whole model, parses it in C++, and serializes + parses the result back: for
    GPT-2 small (650 MB of weights) that was 13-17 s of a 20 s warm `eetjit.compile` (benchmarks/NOTES.md).
    Inference needs only the initializers' types and dims, and the values of small integer ones (shape
    constants, for data propagation), so the weights are replaced by stubs; the inferred nodes, value_info
    and outputs are copied back onto `model`, whose initializers stay untouched."""
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    itemsize = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                onnx.TensorProto.DOUBLE: 8}
    for t in g.initializer:
        if t.data_type in itemsize and itemsize[t.data_type] * int(np.prod(t.dims)) > WEIGHT_STUB_BYTES:
            stub = lg.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
        else:
            lg.initializer.append(t)
    inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    ig = inferred.graph
    del g.node[:]
    g.node.extend(ig.node)                 # subgraphs (If/Loop bodies) carry their own inferred value_info
    del g.value_info[:]
    g.value_info.extend(ig.value_info)
    del g.output[:]
    g.output.extend(ig.output)
