"""Hostile and broken ONNX files: every one gets ModelError, and nothing outside the model folder is opened."""
from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from eetjit import ModelError


def tiny_model(weight_external: str | None = None, n: int = 4) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(1, n * n + 1, dtype=np.float32).reshape(n, n), "W")
    if weight_external is not None:
        w.ClearField("raw_data")
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", weight_external), ("offset", "0"), ("length", str(n * n * 4))):
            e = w.external_data.add()
            e.key, e.value = k, v
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def opened(monkeypatch):
    """Records every path opened through builtins.open / io.open / Path.read_bytes."""
    seen: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        seen.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_valid_model_with_external_data_loads(tmp_path):
    np.arange(1, 17, dtype=np.float32).tofile(tmp_path / "w.bin")
    g = eetjit.load(write(tiny_model("w.bin"), tmp_path / "m.onnx"))
    x = np.ones((2, 4), np.float32)
    (y,) = eetjit.compile(g).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ np.arange(1, 17, dtype=np.float32).reshape(4, 4))


def test_not_onnx(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(ModelError, match="not an ONNX model"):
        eetjit.load(p)


def test_text_file(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_text("hello, I am not a model\n")
    with pytest.raises(ModelError):
        eetjit.load(p)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        eetjit.load(tmp_path / "e.onnx")
    with pytest.raises(ModelError, match="no such file"):
        eetjit.load(tmp_path / "absent.onnx")
    with pytest.raises(ModelError, match="not a regular file"):
        eetjit.load(tmp_path)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated(tmp_path, cut):
    data = tiny_model(n=16).SerializeToString()
    p = tmp_path / "m.onnx"
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelError):
        eetjit.load(p)


def test_truncated_real_fixture(tmp_path):
    src = Path(eetjit.resources.default_model())
    data = src.read_bytes()
    p = tmp_path / "m.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        eetjit.load(p)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd"])
def test_external_data_escaping_folder(tmp_path, opened, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    model_dir = tmp_path / "model"
    (model_dir / "sub").mkdir(parents=True)
    p = write(tiny_model(location), model_dir / "m.onnx")
    opened.clear()
    with pytest.raises(ModelError, match="model's folder|absolute"):
        eetjit.load(p)
    assert not any(s.startswith(str(tmp_path / "secret")) or s == "/etc/passwd" for s in opened)


def test_external_data_symlink_escape(tmp_path, opened):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(16, np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(secret, model_dir / "w.bin")
    p = write(tiny_model("w.bin"), model_dir / "m.onnx")
    opened.clear()
    with pytest.raises(ModelError, match="symlink"):
        eetjit.load(p)
    assert str(secret) not in opened


def test_external_data_missing(tmp_path):
    p = write(tiny_model("w.bin"), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="missing"):
        eetjit.load(p)


def test_external_data_too_short(tmp_path):
    np.ones(3, np.float32).tofile(tmp_path / "w.bin")
    p = write(tiny_model("w.bin"), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="truncated|outside"):
        eetjit.load(p)


def test_cycle(tmp_path):
    n1 = helper.make_node("Add", ["x", "b"], ["a"])
    n2 = helper.make_node("Relu", ["a"], ["b"])
    g = helper.make_graph([n1, n2], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    p = write(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="cycle"):
        eetjit.load(p)


def test_dangling_input(tmp_path):
    n1 = helper.make_node("Add", ["x", "nowhere"], ["y"])
    g = helper.make_graph([n1], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    p = write(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="nowhere"):
        eetjit.load(p)


def test_unsupported_opset(tmp_path):
    m = tiny_model()
    m.opset_import[0].version = 5
    with pytest.raises(ModelError, match="opset 5"):
        eetjit.load(write(m, tmp_path / "m.onnx"))


def test_unknown_op_is_named(tmp_path):
    n1 = helper.make_node("FrobnicateZ", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([n1], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    g = eetjit.load(write(m, tmp_path / "m.onnx"))  # loading is fine: inspect works on anything
    with pytest.raises(ModelError, match="FrobnicateZ"):
        eetjit.compile(g)


def test_duplicate_definition(tmp_path):
    n1 = helper.make_node("Relu", ["x"], ["y"])
    n2 = helper.make_node("Neg", ["x"], ["y"])
    g = helper.make_graph([n1, n2], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    p = write(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="defined twice"):
        eetjit.load(p)


def test_local_function_is_inlined(tmp_path):
    f = helper.make_function("local", "AddRelu", ["a", "b"], ["c"],
                             [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Relu", ["t"], ["c"])],
                             [helper.make_opsetid("", 17)])
    n = helper.make_node("AddRelu", ["x", "x"], ["y"], domain="local")
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[f])
    graph = eetjit.load(write(m, tmp_path / "m.onnx"))
    assert set(graph.op_histogram()) == {"Add", "Relu"}
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    (y,) = eetjit.compile(graph).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(2 * x, 0))
