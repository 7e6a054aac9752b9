"""Reading ONNX files safely, then handing the proto to `convert` and `cleanup`.

Everything read from disk goes through here. External data is resolved by hand instead of through
`onnx.load_external_data_for_model` so that one function decides what may be opened: a relative location
that stays inside the model's folder after symlinks are resolved, a regular file, the byte range inside it.
"""
from __future__ import annotations

import ctypes
import math
import sys
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
    model, weights = _read_model(path, split_weights=True)
    model = _inline_and_infer(model)
    graph = to_graph(model, source=str(path), weights=weights)
    if cleanup:
        from eetjit.cleanup import cleanup as run_cleanup
        run_cleanup(graph)
    return graph


def read_model_proto(path) -> onnx.ModelProto:
    """The whole ModelProto (weights in `raw_data`, external data loaded), checked."""
    return _read_model(path, split_weights=False)[0]


def _read_model(path, split_weights: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(model, weights). With `split_weights`, large embedded float initializers are not parsed by protobuf:
    their `raw_data` is cut out of the bytes before parsing (`_split_raw_data`) and handed back as read-only
    arrays over the file's bytes, by initializer name; the proto keeps their name, dtype and dims only."""
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
    buf = np.empty(size, np.uint8)   # numpy's allocation is aligned, so are the weights that are views of it
    with open(path, "rb") as f:
        n = f.readinto(memoryview(buf))
    if n != size:
        raise ModelError(f"{path}: read {n} of {size} bytes (the file changed while being read)")
    data = memoryview(buf)
    split = _split_raw_data(data) if split_weights and sys.byteorder == "little" else None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data if split is None else split[0])
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{path}: not an ONNX model or truncated protobuf ({e})") from None
    weights = {} if split is None else _cut_weights(model, buf, split[1])
    _check_structure(model, path)
    _load_external_data(model, path.resolve().parent, path)
    return model, weights


# --- weights without protobuf: raw_data cut out of the serialized model ------------------------------------------
#
# Parsing copies every `raw_data` into protobuf's arena and reading `TensorProto.raw_data` copies it again into
# a Python bytes object (for GPT-2 small: 0.3 s + 0.34 s of a warm compile, benchmarks/NOTES.md). The wire
# format is simple enough to find those fields first: ModelProto.graph (field 7) → GraphProto.initializer
# (field 5) → TensorProto.raw_data (field 9). Anything unusual (a repeated graph or raw_data field, groups,
# a malformed varint or length) gives up the split and the whole file is parsed as before, so protobuf
# still judges every malformed file.

_F_MODEL_GRAPH, _F_GRAPH_INITIALIZER, _F_TENSOR_RAW_DATA = 7, 5, 9
_FLOAT_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                   onnx.TensorProto.DOUBLE: 8}


class _Unsplittable(Exception):
    pass


def _varint(b, p: int, end: int) -> tuple[int, int]:
    r = shift = 0
    while True:
        if p >= end or shift > 63:
            raise _Unsplittable
        c = b[p]
        p += 1
        r |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return r, p


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _fields(b, p: int, end: int):
    """(field, wire type, start, end, payload start, payload length) of each field in b[p:end]."""
    while p < end:
        start = p
        tag, p = _varint(b, p, end)
        field, wt = tag >> 3, tag & 7
        q = n = None
        if wt == 0:
            _, p = _varint(b, p, end)
        elif wt == 1:
            p += 8
        elif wt == 5:
            p += 4
        elif wt == 2:
            n, q = _varint(b, p, end)
            p = q + n
        else:
            raise _Unsplittable   # groups (3, 4) or invalid
        if p > end or field == 0:
            raise _Unsplittable
        yield field, wt, start, p, q, n


def _split_raw_data(b: memoryview):
    """(the model's bytes without the large raw_data of graph initializers, [(initializer index, offset,
    length)]), or None when nothing is cut or the bytes are not plain enough to cut safely."""
    try:
        graphs = [(s, e, q, n) for f, wt, s, e, q, n in _fields(b, 0, len(b)) if f == _F_MODEL_GRAPH]
        if len(graphs) != 1 or graphs[0][2] is None:
            return None
        gs, ge, gq, gn = graphs[0]
        pieces, cut, k, last = [], [], 0, gq
        for f, wt, s, e, q, n in _fields(b, gq, gq + gn):
            if f != _F_GRAPH_INITIALIZER:
                continue
            if wt != 2:
                return None
            raws = [(s3, e3, q3, n3) for f3, wt3, s3, e3, q3, n3 in _fields(b, q, q + n) if f3 == _F_TENSOR_RAW_DATA]
            if len(raws) == 1 and raws[0][2] is not None and raws[0][3] > WEIGHT_STUB_BYTES:
                s3, e3, q3, n3 = raws[0]
                body = bytes(b[q:s3]) + bytes(b[e3:q + n])
                pieces += [b[last:s], _encode_varint((_F_GRAPH_INITIALIZER << 3) | 2), _encode_varint(len(body)), body]
                last = e
                cut.append((k, q3, n3))
            elif len(raws) > 1:
                return None
            k += 1
        if not cut:
            return None
        pieces.append(b[last:gq + gn])
        graph = b"".join(pieces)
        model = b"".join([b[:gs], _encode_varint((_F_MODEL_GRAPH << 3) | 2), _encode_varint(len(graph)), graph,
                          b[ge:]])
        return model, (cut, k)
    except _Unsplittable:
        return None


def _cut_weights(model: onnx.ModelProto, buf: np.ndarray, cut) -> dict[str, np.ndarray]:
    """The arrays of the cut-out raw_data, by initializer name: read-only views of `buf` (the file's bytes).

    A raw_data that starts misaligned for its dtype is first moved down by up to itemsize - 1 bytes, over its own
    field's tag and length (already parsed; `buf` is ours), when that stays past the previous cut-out region;
    otherwise it is copied. A tensor whose array would not be exactly what `numpy_helper.to_array` makes (not a
    float type, external or segmented, size not matching its dims, a repeated name) gets its raw_data back
    instead, so that the usual conversion and its errors apply."""
    cut, count = cut
    inits = model.graph.initializer
    if len(inits) != count:           # cannot happen with one graph field; be sure anyway
        raise ModelError("initializers changed between the split and the parse")
    weights: dict[str, np.ndarray] = {}
    base = buf.ctypes.data
    prev_end = 0
    for k, off, n in cut:
        t = inits[k]
        itemsize = _FLOAT_ITEMSIZE.get(t.data_type)
        expected = None
        if itemsize is not None and all(d >= 0 for d in t.dims):
            expected = itemsize * math.prod(t.dims)
        if (expected != n or t.HasField("raw_data") or t.HasField("segment") or t.name in weights
                or t.data_location != onnx.TensorProto.DEFAULT):
            t.raw_data = buf[off:off + n].tobytes()
            prev_end = off + n
            continue
        shift = (base + off) % itemsize
        if shift and off - shift >= prev_end:
            ctypes.memmove(base + off - shift, base + off, n)
            off -= shift
            shift = 0
        arr = buf[off:off + n] if not shift else buf[off:off + n].copy()
        prev_end = off + n
        arr = arr.view(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))).reshape(tuple(t.dims))
        arr.flags.writeable = False
        weights[t.name] = arr
    return weights


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
    except Exception as e:
        # Shape inference is an aid (typed values, static folding), not a requirement: a graph it cannot
        # type still runs, with types discovered at run time. But many fusions need ranks and static dims
        # (a TorchScript Split's axis=2, Linear's reshape targets), so say so instead of fusing less silently.
        import warnings
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        warnings.warn(f"onnx shape inference failed ({type(e).__name__}: {why}); the graph stays untyped and "
                      "fewer ops will fuse", RuntimeWarning, stacklevel=3)
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
