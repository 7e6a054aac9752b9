"""RMSNorm, AddLayerNorm and AddRMSNorm rules (rms_norm.py, add_norm.py; LayerNorm from layer_norm.py):
counts on every fixture, fused == unfused through the reference executor, and the near misses that say why
a graph that is almost a norm was left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from cases import family, fixture_names, fixture_path, random_feeds
from eetjit.reference.executor import run_graph
from eetjit.rewrite import fuse
from eetjit.rewrite.rules import add_norm, embedding, layer_norm, rms_norm

NAMES = fixture_names()
L = 2
NORM_RULES = layer_norm.RULES + rms_norm.RULES + embedding.RULES + add_norm.RULES
EXPECTED = {
    "gpt2": {"LayerNorm": 1, "AddLayerNorm": 2 * L, "RMSNorm": 0, "AddRMSNorm": 0},
    "bert": {"LayerNorm": 0, "AddLayerNorm": 2 * L, "RMSNorm": 0, "AddRMSNorm": 0},
    "llama": {"LayerNorm": 0, "AddLayerNorm": 0, "RMSNorm": 1, "AddRMSNorm": 2 * L},
}
NORM_OPS = ("ReduceMean", "LayerNormalization", "RMSNormalization", "Sqrt", "Pow", "Reciprocal")


# --- the fixtures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fixture_norms_all_fused(name):
    """With the whole rule table: every norm fused, every residual add inside an Add*Norm."""
    report = eetjit.fuse(eetjit.load(fixture_path(name)))
    want = EXPECTED[family(name)]
    assert {k: report.counts.get(k, 0) for k in want} == want, report.summary()
    left = {op: n for op, n in report.unfused.items() if op in NORM_OPS}
    assert not left, report.summary()


@pytest.mark.parametrize("name", NAMES)
def test_fixture_fused_equals_unfused(name):
    """Only the norm/embedding rules, so a difference points here; real (mask == 1) positions compared."""
    plain = eetjit.load(fixture_path(name))
    fused = eetjit.load(fixture_path(name))
    report = fuse(fused, NORM_RULES)
    assert {k: report.counts.get(k, 0) for k in EXPECTED[family(name)]} == EXPECTED[family(name)]
    feeds = random_feeds(name)
    (want,), (got,) = run_graph(plain, feeds), run_graph(fused, feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


# --- small graphs built with onnx.helper ----------------------------------------------------------------

class Model:
    """A few lines of onnx.helper: graph inputs, initializers, nodes; saved for eetjit.load."""

    def __init__(self, opset: int = 18):
        self.opset, self.nodes, self.inits, self.inputs, self._n = opset, [], [], [], 0

    def input(self, name, shape, dtype=TensorProto.FLOAT):
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, arr, name=None):
        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, *inputs, name=None, **attrs):
        self._n += 1
        out = name or f"{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n_{out}", **attrs))
        return out

    def axes(self, op_type, x, axes, **attrs):
        """ReduceMean/Unsqueeze with axes as an attribute before opset 18 (13 for Unsqueeze), an input after."""
        since = 13 if op_type in ("Unsqueeze", "Squeeze") else 18
        if self.opset >= since:
            return self.op(op_type, x, self.const(np.array(axes, np.int64)), **attrs)
        return self.op(op_type, x, axes=axes, **attrs)

    def save(self, tmp_path, outputs, dtype=TensorProto.FLOAT, fname="m.onnx"):
        outs = [helper.make_tensor_value_info(o, dtype, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        path = tmp_path / fname
        onnx.save(model, path)
        return path


B, S, E = 2, 5, 8
RNG = np.random.default_rng(0)
GAMMA = RNG.standard_normal(E).astype(np.float32)
BETA = RNG.standard_normal(E).astype(np.float32)


def rms_decomposed(m: Model, x, form: str = "pow-div", eps: float = 1e-6, two: float = 2.0, axis: int = -1,
                   cast_to=None):
    """The RMSNorm subgraph as one exporter or another writes it. Returns the output name."""
    x32 = m.op("Cast", x, to=cast_to) if cast_to is not None else x
    sq = m.op("Mul", x32, x32) if form.startswith("mul") else m.op("Pow", x32, m.const(np.float32(two)))
    ms = m.axes("ReduceMean", sq, [axis], keepdims=1)
    ms_eps = m.op("Add", ms, m.const(np.float32(eps)))
    if form.endswith("pow-neg-half"):
        norm = m.op("Mul", x32, m.op("Pow", ms_eps, m.const(np.float32(-0.5))))
    elif form.endswith("div-x"):
        norm = m.op("Div", x32, m.op("Sqrt", ms_eps))
    elif form.endswith("reciprocal"):
        norm = m.op("Mul", m.op("Reciprocal", m.op("Sqrt", ms_eps)), x32)
    else:
        norm = m.op("Mul", x32, m.op("Div", m.const(np.float32(1.0)), m.op("Sqrt", ms_eps)))
    if cast_to is not None:
        norm = m.op("Cast", norm, to=TensorProto.FLOAT16)
    gamma = GAMMA.astype(np.float16) if cast_to is not None else GAMMA
    return m.op("Mul", m.const(gamma), norm)


def _feeds(tmp_path_model, names, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((B, S, E)).astype(dtype) for n in names}


def _fuse_and_compare(path, feeds, rules=None, rtol=1e-5, atol=1e-6):
    plain, fused = eetjit.load(path), eetjit.load(path)
    report = fuse(fused, rules)
    for want, got in zip(run_graph(plain, feeds), run_graph(fused, feeds)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol, atol=atol)
    return fused, report


def _reasons(report, rule_prefix):
    return [nm.reason for nm in report.near_misses if nm.rule.startswith(rule_prefix)]


@pytest.mark.parametrize("form,opset", [("pow-div", 14), ("mul-reciprocal", 18), ("pow-div-x", 18),
                                        ("pow-pow-neg-half", 17)])
def test_rms_norm_decomposed_forms(tmp_path, form, opset):
    m = Model(opset)
    y = rms_decomposed(m, m.input("x", [B, S, E]), form)
    graph, report = _fuse_and_compare(m.save(tmp_path, [y]), _feeds(tmp_path, ["x"]), NORM_RULES)
    assert report.counts == {"RMSNorm": 1}, report.summary()
    assert not (set(report.unfused) & set(NORM_OPS)), report.summary()
    (node,) = graph.nodes
    assert node.attrs["epsilon"] == pytest.approx(1e-6) and np.array_equal(node.inputs[1].const, GAMMA)


def test_rms_norm_float16_with_casts(tmp_path):
    """x.float() ... .to(float16) * gamma: the Casts go inside the fused op (which computes in float32)."""
    m = Model(18)
    y = rms_decomposed(m, m.input("x", [B, S, E], TensorProto.FLOAT16), cast_to=TensorProto.FLOAT)
    path = m.save(tmp_path, [y], TensorProto.FLOAT16)
    graph, report = _fuse_and_compare(path, _feeds(tmp_path, ["x"], np.float16), NORM_RULES, rtol=2e-3, atol=2e-3)
    assert report.counts == {"RMSNorm": 1} and "Cast" not in report.unfused, report.summary()


def test_rms_normalization_op(tmp_path):
    m = Model(23)
    y = m.op("RMSNormalization", m.input("x", [B, S, E]), m.const(GAMMA), epsilon=1e-5)
    graph, report = _fuse_and_compare(m.save(tmp_path, [y]), _feeds(tmp_path, ["x"]), NORM_RULES)
    assert report.counts == {"RMSNorm": 1} and graph.nodes[0].attrs["epsilon"] == pytest.approx(1e-5)


@pytest.mark.parametrize("defect,reason", [
    ("eps", "epsilon 0.5"),
    ("exponent", "exponent 3"),
    ("axis", "axes [1]"),
    ("shared", "is also used by"),
    ("output", "is a graph output"),
])
def test_rms_norm_near_misses(tmp_path, defect, reason):
    m = Model(18)
    x = m.input("x", [B, S, E])
    y = rms_decomposed(m, x, eps=0.5 if defect == "eps" else 1e-6, two=3.0 if defect == "exponent" else 2.0,
                       axis=1 if defect == "axis" else -1)
    outputs = [y]
    mean = next(n.output[0] for n in m.nodes if n.op_type == "ReduceMean")
    if defect == "shared":
        outputs.append(m.op("Neg", mean))
    if defect == "output":
        outputs.append(mean)
    graph, report = _fuse_and_compare(m.save(tmp_path, outputs), _feeds(tmp_path, ["x"]), NORM_RULES)
    assert "RMSNorm" not in report.counts, report.summary()
    assert any(reason in r for r in _reasons(report, "RMSNorm/")), report.near_misses


# --- residual add + norm --------------------------------------------------------------------------------

def _residual_block(m: Model, norm: str):
    """h = a + b; y = norm(h); next = h + c (the next residual reads the sum)."""
    a, b, c = m.input("a", [B, S, E]), m.input("b", [B, S, E]), m.input("c", [B, S, E])
    h = m.op("Add", a, b)
    if norm == "layer":
        y = m.op("LayerNormalization", h, m.const(GAMMA), m.const(BETA), axis=-1, epsilon=1e-5)
    else:
        y = rms_decomposed(m, h)
    return [y, m.op("Add", h, c)]


@pytest.mark.parametrize("norm,fused_op", [("layer", "AddLayerNorm"), ("rms", "AddRMSNorm")])
def test_add_norm_takes_the_residual(tmp_path, norm, fused_op):
    m = Model(18)
    path = m.save(tmp_path, _residual_block(m, norm))
    graph, report = _fuse_and_compare(path, _feeds(tmp_path, ["a", "b", "c"]), NORM_RULES)
    assert report.counts == {fused_op: 1}, report.summary()
    (node,) = [n for n in graph.nodes if n.domain == "eet"]
    nxt = next(n for n in graph.nodes if n.op_type == "Add")
    assert nxt.inputs[0] is node.outputs[1], "the sum output feeds the next residual add"
    assert [v.name for v in node.inputs[:2]] == ["a", "b"]


def test_add_norm_sum_as_graph_output_keeps_its_name(tmp_path):
    m = Model(18)
    a, b = m.input("a", [B, S, E]), m.input("b", [B, S, E])
    h = m.op("Add", a, b, name="hidden")
    y = m.op("LayerNormalization", h, m.const(GAMMA), m.const(BETA), epsilon=1e-5)
    graph, report = _fuse_and_compare(m.save(tmp_path, [y, h]), _feeds(tmp_path, ["a", "b"]), NORM_RULES)
    assert report.counts == {"AddLayerNorm": 1}
    assert [o.name for o in graph.outputs] == [y, "hidden"]


@pytest.mark.parametrize("defect,reason", [
    ("bias", "a bias add"),
    ("broadcast", "broadcasts"),
    ("lookup", "table lookup"),
])
def test_add_norm_near_misses(tmp_path, defect, reason):
    m = Model(18)
    a = m.input("a", [B, S, E])
    if defect == "bias":
        b = m.const(BETA)
    elif defect == "broadcast":
        b = m.input("b", [1, 1, E])
    else:   # wte[ids] + x: an embedding sum, which only the Embedding rule may take
        b = m.op("Gather", m.const(RNG.standard_normal((11, E)).astype(np.float32)), m.input("ids", [B, S],
                                                                                             TensorProto.INT64))
    y = m.op("LayerNormalization", m.op("Add", a, b), m.const(GAMMA), m.const(BETA), epsilon=1e-5)
    feeds = _feeds(tmp_path, ["a"])
    if defect == "broadcast":
        feeds["b"] = RNG.standard_normal((1, 1, E)).astype(np.float32)
    if defect == "lookup":
        feeds["ids"] = RNG.integers(0, 11, (B, S))
    rules = layer_norm.RULES + add_norm.RULES      # no Embedding rule: the guard in add_norm must hold
    graph, report = _fuse_and_compare(m.save(tmp_path, [y]), feeds, rules)
    assert report.counts == {"LayerNorm": 1}, report.summary()
    assert any(reason in r for r in _reasons(report, "AddLayerNorm/")), report.near_misses
