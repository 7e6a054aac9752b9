"""Fast weight loading (raw_data cut out before protobuf parses the file) and the tied-LM-head check give the
same results as the plain paths: `numpy_helper.to_array` on a fully parsed proto, `np.array_equal(w, wte.T)`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from eetjit import ModelError
from eetjit.frontend import loader
from eetjit.frontend.convert import tensor_to_array
from eetjit.plan import structure

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "graphs").glob("*.onnx"))


def _model(inits, node_ins=("x", "W")) -> onnx.ModelProto:
    node = helper.make_node("MatMul", list(node_ins), ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _same_as_full_parse(path) -> int:
    full = loader.read_model_proto(path)
    model, weights = loader._read_model(path, split_weights=True)
    ref = {t.name: tensor_to_array(t, "ref") for t in full.graph.initializer}
    for t in model.graph.initializer:
        got = weights[t.name] if t.name in weights else tensor_to_array(t, "got")
        want = ref[t.name]
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), t.name
        assert not got.flags.writeable and got.flags.aligned and got.flags.c_contiguous
    for t in full.graph.initializer:            # apart from the cut raw_data, the protos are identical
        if t.name in weights:
            t.ClearField("raw_data")
    assert full.SerializeToString() == model.SerializeToString()
    return len(weights)


@pytest.mark.parametrize("path", FIXTURES[:: max(1, len(FIXTURES) // 8)], ids=lambda p: p.name)
def test_split_weights_match_full_parse(path):
    _same_as_full_parse(path)


@pytest.mark.parametrize("shift", range(4))
def test_split_weights_any_alignment(tmp_path, shift):
    # the name's length moves raw_data's offset in the file: every misalignment is copied to an aligned array
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    m = _model([numpy_helper.from_array(w, "W" + "w" * shift)], ("x", "W" + "w" * shift))
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    assert _same_as_full_parse(p) == 1
    (y,) = eetjit.compile(eetjit.load(p), verbose=False).run(None, {"x": np.ones((1, 64), np.float32)})
    np.testing.assert_allclose(y, np.ones((1, 64), np.float32) @ w)


def test_split_keeps_small_and_integer_tensors_in_the_proto(tmp_path):
    big_int = numpy_helper.from_array(np.arange(2048, dtype=np.int64), "I")
    small = numpy_helper.from_array(np.ones((4, 4), np.float32), "S")
    big = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    p = tmp_path / "m.onnx"
    p.write_bytes(_model([big_int, small, big]).SerializeToString())
    model, weights = loader._read_model(p, split_weights=True)
    assert set(weights) == {"W"}
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["I"].HasField("raw_data") and inits["S"].HasField("raw_data")


def test_split_raw_data_size_mismatch_is_still_an_error(tmp_path):
    t = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    t.dims[0] = 65                                  # 64*64 floats of data for a [65, 64] tensor
    p = tmp_path / "m.onnx"
    p.write_bytes(_model([t]).SerializeToString())
    _, weights = loader._read_model(p, split_weights=True)
    assert weights == {}                            # handed back to the usual conversion ...
    with pytest.raises(ModelError, match="cannot be decoded"):
        eetjit.load(p)                              # ... and its error


def test_split_gives_up_on_unusual_wire_format(tmp_path):
    t = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    data = bytearray(_model([t]).SerializeToString())
    assert loader._split_raw_data(memoryview(bytes(data))) is not None
    # a second graph field (protobuf merges them): parse the whole file instead
    extra = helper.make_graph([], "g2", [], []).SerializeToString()
    twice = bytes(data) + loader._encode_varint((7 << 3) | 2) + loader._encode_varint(len(extra)) + extra
    assert loader._split_raw_data(memoryview(twice)) is None
    # truncated in the middle of the weight: no split, and protobuf's error
    assert loader._split_raw_data(memoryview(bytes(data[:-100]))) is None
    p = tmp_path / "m.onnx"
    p.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelError):
        eetjit.load(p)


# --- tied LM head ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_memo():
    structure._tied_memo.clear()
    yield
    structure._tied_memo.clear()


def _frozen(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case", ["equal", "late_row", "sampled_row", "nan", "signed_zero", "view", "view_nan",
                                  "dtype", "shape"])
def test_tied_check_matches_array_equal(case, no_memo):
    rng = np.random.default_rng(0)
    wte = rng.standard_normal((1000, 24)).astype(np.float32)
    w = np.ascontiguousarray(wte.T)
    if case == "late_row":
        w[5, 997] += 1                              # not a sampled row
    elif case == "sampled_row":
        w[3, 0] = 7
    elif case == "nan":
        wte[500, 2] = np.nan
        w = np.ascontiguousarray(wte.T)
    elif case == "signed_zero":
        wte[400, 1], w[1, 400] = 0.0, -0.0
    elif case == "view":
        w = wte.T
    elif case == "view_nan":
        wte[10, 0] = np.nan
        w = wte.T
    elif case == "dtype":
        w = w.astype(np.float64)
    elif case == "shape":
        w = w[:, :999]
    want = w.shape == wte.T.shape and np.array_equal(w, wte.T)
    assert structure._equal_transposed(w, wte) == want
    assert structure.tied_to_embedding(_frozen(w), _frozen(wte)) == want


def test_tied_check_is_remembered_for_the_same_read_only_arrays(no_memo, monkeypatch):
    wte = _frozen(np.arange(24.0, dtype=np.float32).reshape(6, 4))
    w = _frozen(wte.T.copy())
    assert structure.tied_to_embedding(w, wte)
    calls = []
    monkeypatch.setattr(structure, "_equal_transposed", lambda a, b: calls.append(1) or False)
    assert structure.tied_to_embedding(w, wte)                  # remembered
    assert not calls
    w2 = _frozen(w.copy())
    assert not structure.tied_to_embedding(w2, wte)             # another array: checked again
    assert calls == [1]
    w3 = wte.T.copy()                               # writeable: always checked
    structure.tied_to_embedding(w3, wte)
    structure.tied_to_embedding(w3, wte)
    assert calls == [1, 1, 1]


def test_cut_weights_moves_or_copies_misaligned_data():
    # an fp16 weight of 2049 values at offset 0 ends at byte 4098; a float32 weight right after it cannot be
    # moved down to 4096 without overwriting the first one's data: it is copied (aligned) instead
    a = np.arange(2049, dtype=np.float16)
    b = np.arange(1025, dtype=np.float32)
    buf = np.empty(a.nbytes + b.nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 16                 # a 16-aligned start, as numpy gives
    raw = a.tobytes() + b.tobytes()
    buf[start:start + len(raw)] = np.frombuffer(raw, np.uint8)
    model = onnx.ModelProto()
    for name, arr in (("A", a), ("B", b)):
        t = model.graph.initializer.add()
        t.name, t.data_type = name, helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
    w = loader._cut_weights(model, buf, ([(0, start, a.nbytes), (1, start + a.nbytes, b.nbytes)], 2))
    assert np.shares_memory(w["A"], buf) and not np.shares_memory(w["B"], buf)
    assert w["A"].tobytes() == a.tobytes() and w["B"].tobytes() == b.tobytes() and w["B"].flags.aligned
    # with room before it (here: 3 bytes of a header), the float32 weight is moved down by one byte instead
    buf[start:start + len(raw) + 3] = np.frombuffer(a.tobytes() + b"\x4a\x00\x00" + b.tobytes(), np.uint8)
    w = loader._cut_weights(model, buf, ([(0, start, a.nbytes), (1, start + a.nbytes + 3, b.nbytes)], 2))
    assert w["B"].ctypes.data == buf.ctypes.data + start + a.nbytes + 2
    assert np.shares_memory(w["B"], buf) and w["B"].flags.aligned
    assert w["A"].tobytes() == a.tobytes() and w["B"].tobytes() == b.tobytes()
    assert not w["A"].flags.writeable and not w["B"].flags.writeable
