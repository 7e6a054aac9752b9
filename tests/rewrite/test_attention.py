"""Attention rule (attention.py with _layout/_mask/_probe): counts and numerics on every fixture, the export
spellings it must see through (merged transposes, sqrt-scale on q and k, GQA repeat_kv, boolean/additive
masks, the ONNX Attention op) on small onnx.helper graphs, and the near misses that say why an almost-attention
was left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from cases import family, fixture_names, fixture_path, random_feeds
from eetjit.reference.executor import run_graph
from eetjit.rewrite import fuse
from eetjit.rewrite.rules import attention, rotary

NAMES = fixture_names()
L = 2
MY_RULES = rotary.RULES + attention.RULES


def _activation_matmuls(graph):
    return [n for n in graph.nodes if n.op_type == "MatMul" and n.domain == ""
            and all(v is not None and not v.is_const for v in n.inputs)]


# --- the fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fused_fixtures():
    cache = {}

    def get(name):
        if name not in cache:
            g = eetjit.load(fixture_path(name))
            cache[name] = (g, fuse(g, MY_RULES))
        return cache[name]
    return get


@pytest.mark.parametrize("name", NAMES)
def test_fixture_attention_counts(name, fused_fixtures):
    """Only the attention + rotary rules, on unfused projections (MatMul/Gemm/Split sources)."""
    graph, report = fused_fixtures(name)
    want = {"Attention": L, "PadInfo": 1, "Rotary": 2 * L if family(name) == "llama" else 0}
    assert {k: report.counts.get(k, 0) for k in want} == want, report.summary()
    left = {k: v for k, v in report.unfused.items() if k in ("Softmax", "IsNaN", "Attention", "RotaryEmbedding",
                                                             "Cos", "Sin", "Neg")}
    assert not left, report.summary()
    assert not _activation_matmuls(graph), report.summary()
    nodes = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Attention"]
    causal = 0 if family(name) == "bert" else 1
    kv = 2 if family(name) == "llama" else 4
    for n in nodes:
        assert n.attrs["causal"] == causal and n.attrs["num_heads"] == 4 and n.attrs["kv_num_heads"] == kv
        assert n.attrs["head_dim"] == 8 and n.attrs["scale"] == pytest.approx(8 ** -0.5, rel=1e-6)
        assert n.inputs[3].producer.op_type == "PadInfo" and n.inputs[3].producer.inputs[0].name == "attention_mask"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_fused_equals_unfused(name, fused_fixtures):
    graph, _ = fused_fixtures(name)
    plain = eetjit.load(fixture_path(name))
    for lengths in ((7, 5, 2, 1), (6,)):
        feeds = random_feeds(name, lengths=lengths, seed=len(lengths))
        (want,), (got,) = run_graph(plain, feeds), run_graph(graph, feeds)
        real = feeds["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-ts14-eager", "bert-dyn18-sdpa", "llama-dyn23-sdpa", "llama-ts17-eager"])
def test_fixture_whole_table(name):
    """With every rule (projections fused into eet.Linear first), attention still fuses and reads them."""
    graph = eetjit.load(fixture_path(name))
    report = eetjit.fuse(graph)
    assert report.counts.get("Attention") == L and report.counts.get("PadInfo") == 1, report.summary()
    for n in graph.nodes:
        if n.domain == "eet" and n.op_type == "Attention":
            assert all(v.producer is not None and v.producer.domain == "eet" for v in n.inputs[:3]), n


# --- small graphs built with onnx.helper ----------------------------------------------------------------

class Model:
    """A few lines of onnx.helper: inputs, initializers, nodes; saved for eetjit.load."""

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

    def i64(self, *vals):
        return self.const(np.array(vals, np.int64))

    def op(self, op_type, *inputs, name=None, n_out=1, **attrs):
        self._n += 1
        base = name or f"{op_type.lower()}{self._n}"
        outs = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"n_{base}", **attrs))
        return outs[0] if n_out == 1 else outs

    def save(self, tmp_path, outputs, fname="m.onnx"):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        path = tmp_path / fname
        onnx.save(model, path)
        return path


H, D = 4, 4
E = H * D
RNG = np.random.default_rng(0)


def _w(n_in, n_out):
    return (RNG.standard_normal((n_in, n_out)) * 0.5).astype(np.float32)


WQ, WK, WV, WO = _w(E, E), _w(E, E), _w(E, E), _w(E, E)


def _split_heads(m, x, heads, perm=(0, 2, 1, 3)):
    return m.op("Transpose", m.op("Reshape", x, m.i64(0, 0, heads, D)), perm=list(perm))


def _repeat_kv(m, x_BHSD, kv, rep):
    """HF repeat_kv: [B, kv, S, D] -> [B, kv*rep, S, D] with Unsqueeze/Expand/Reshape."""
    u = m.op("Unsqueeze", x_BHSD, m.i64(2))
    e = m.op("Expand", u, m.i64(1, 1, rep, 1, 1))
    return m.op("Reshape", e, m.i64(0, kv * rep, -1, D))


def _seq_range(m):
    seq = m.op("Gather", m.op("Shape", "attention_mask"), m.const(np.array(1, np.int64)), axis=0)
    return m.op("Range", m.const(np.array(0, np.int64)), seq, m.const(np.array(1, np.int64)))


def _causal_bool(m, anti=False, window=None):
    """[S, S] bool: key j visible to query i iff j <= i (anti: j >= i; window: also i - j < window)."""
    r = _seq_range(m)
    rows, cols = m.op("Unsqueeze", r, m.i64(1)), m.op("Unsqueeze", r, m.i64(0))
    allowed = m.op("LessOrEqual", rows, cols) if anti else m.op("LessOrEqual", cols, rows)
    if window is not None:
        dist = m.op("Sub", rows, cols)
        allowed = m.op("And", allowed, m.op("Less", dist, m.const(np.array(window, np.int64))))
    return allowed


def _padding_bool(m):
    """[B, 1, 1, S] bool from attention_mask."""
    return m.op("Unsqueeze", m.op("Cast", "attention_mask", to=TensorProto.BOOL), m.i64(1, 2))


def build(tmp_path, *, causal=True, mask_form="where", scale_form="div", k_perm="merged", kv=H, layout="ok",
          scores_out=False, probs_out=False, v_scale=None, alibi=False, mask_kind="ok", rot=None, opset=18):
    """One attention block: y = (softmax(q k^T * scale + mask) v) Wo, written the way `..._form` says."""
    m = Model(opset)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    Wk = WK[:, :kv * D]
    Wv = WV[:, :kv * D]
    q, k, v = m.op("MatMul", x, m.const(WQ)), m.op("MatMul", x, m.const(Wk)), m.op("MatMul", x, m.const(Wv))
    if v_scale is not None:
        v = m.op("Mul", v, m.const(np.float32(v_scale)))
    if layout == "head_minor":  # [B, S, D, H] split: not the contract's head-major layout
        q_h = m.op("Transpose", m.op("Reshape", q, m.i64(0, 0, D, H)), perm=[0, 3, 1, 2])
    else:
        q_h = _split_heads(m, q, H)
    rep = H // kv
    if rot is not None:
        q_h, k_bhsd = rot(m, q_h, H), rot(m, _split_heads(m, k, kv), kv)
    else:
        k_bhsd = _split_heads(m, k, kv)
    if k_perm == "merged" and rep == 1 and rot is None:
        k_t = _split_heads(m, k, kv, perm=(0, 2, 3, 1))
    else:
        k_rep = _repeat_kv(m, k_bhsd, kv, rep) if rep > 1 else k_bhsd
        k_t = m.op("Transpose", k_rep, perm=[0, 1, 3, 2])
    v_h = _split_heads(m, v, kv)
    if rep > 1:
        v_h = _repeat_kv(m, v_h, kv, rep)
    if scale_form == "sqrt_qk":
        c = m.const(np.float32(D ** -0.25))
        q_h, k_t = m.op("Mul", q_h, c), m.op("Mul", k_t, c)
    scores = m.op("MatMul", q_h, k_t, name="scores")
    if scale_form == "div":
        scores = m.op("Div", scores, m.const(np.float32(np.sqrt(D))))
    if alibi:
        r = _seq_range(m)
        dist = m.op("Cast", m.op("Sub", m.op("Unsqueeze", r, m.i64(0)), m.op("Unsqueeze", r, m.i64(1))),
                    to=TensorProto.FLOAT)
        scores = m.op("Add", scores, m.op("Mul", dist, m.const(np.float32(0.5))))
    if mask_kind == "anti":
        allowed = m.op("And", _causal_bool(m, anti=True), _padding_bool(m))
    elif mask_kind == "window":
        allowed = m.op("And", _causal_bool(m, window=2), _padding_bool(m))
    else:
        allowed = m.op("And", _causal_bool(m), _padding_bool(m)) if causal else _padding_bool(m)
    if mask_form == "where":
        masked = m.op("Where", allowed, scores, m.const(np.float32(np.finfo(np.float32).min)))
    else:  # additive: (1 - allowed) * -10000
        bias = m.op("Mul", m.op("Sub", m.const(np.float32(1)), m.op("Cast", allowed, to=TensorProto.FLOAT)),
                    m.const(np.float32(-10000.0)))
        masked = m.op("Add", bias, scores)
    probs = m.op("Softmax", masked, axis=-1, name="probs")
    ctx = m.op("MatMul", probs, v_h)
    merged = m.op("Reshape", m.op("Transpose", ctx, perm=[0, 2, 1, 3]), m.i64(0, 0, E))
    y = m.op("MatMul", merged, m.const(WO), name="y")
    outputs = [y] + (["scores"] if scores_out else []) + (["probs"] if probs_out else [])
    return m.save(tmp_path, outputs)


def _feeds(lengths=(5, 3), S=5, left=True, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.zeros((len(lengths), S), np.int64)
    for b, n in enumerate(lengths):
        if left:
            mask[b, S - n:] = 1
        else:
            mask[b, :n] = 1
    return {"x": rng.standard_normal((len(lengths), S, E)).astype(np.float32), "attention_mask": mask}


def _fuse_and_compare(path, feeds_list, rules=MY_RULES):
    plain, fused = eetjit.load(path), eetjit.load(path)
    report = fuse(fused, rules)
    for feeds in feeds_list:
        real = feeds["attention_mask"].astype(bool)
        (want, *_), (got, *_) = run_graph(plain, feeds), run_graph(fused, feeds)   # y: [B, S, E]
        np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
    return fused, report


def _attention_nodes(graph):
    return [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Attention"]


def _reasons(report, prefix="Attention/"):
    return [nm.reason for nm in report.near_misses if nm.rule.startswith(prefix)]


BOTH_PADDINGS = [_feeds((5, 3, 1), left=True), _feeds((5, 2), left=False), _feeds((4,), S=4)]


@pytest.mark.parametrize("causal,mask_form,scale_form,k_perm", [
    (True, "where", "div", "merged"),
    (True, "add", "sqrt_qk", "two_transposes"),
    (False, "add", "div", "merged"),
    (False, "where", "sqrt_qk", "two_transposes"),
])
def test_attention_spellings(tmp_path, causal, mask_form, scale_form, k_perm):
    path = build(tmp_path, causal=causal, mask_form=mask_form, scale_form=scale_form, k_perm=k_perm)
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS)
    assert report.counts == {"Attention": 1, "PadInfo": 1}, report.summary()
    (node,) = _attention_nodes(graph)
    assert node.attrs == {"num_heads": H, "kv_num_heads": H, "head_dim": D, "scale": pytest.approx(D ** -0.5),
                          "causal": int(causal)}
    assert node.inputs[0].producer.op_type == "MatMul"           # reads the projection directly
    assert not ({"Softmax", "Transpose", "Where", "Div"} & set(report.unfused)), report.summary()
    assert not _activation_matmuls(graph)


def test_attention_gqa_repeat_kv(tmp_path):
    path = build(tmp_path, kv=2, k_perm="two_transposes")
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS)
    assert report.counts == {"Attention": 1, "PadInfo": 1}, report.summary()
    (node,) = _attention_nodes(graph)
    assert (node.attrs["num_heads"], node.attrs["kv_num_heads"]) == (H, 2)
    assert "Expand" not in report.unfused, report.summary()


def test_attention_batch_one_no_padding(tmp_path):
    path = build(tmp_path)
    graph, report = _fuse_and_compare(path, [_feeds((5,), S=5), _feeds((1,), S=1)])
    assert report.counts.get("Attention") == 1


def test_onnx_attention_op_3d_gqa(tmp_path):
    """opset 23 Attention on [B, S, H*D] operands with native GQA, is_causal and a boolean padding mask."""
    m = Model(23)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    q, k, v = (m.op("MatMul", x, m.const(W)) for W in (WQ, WK[:, :2 * D], WV[:, :2 * D]))
    y = m.op("Attention", q, k, v, _padding_bool(m), is_causal=1, q_num_heads=H, kv_num_heads=2)
    path = m.save(tmp_path, [m.op("MatMul", y, m.const(WO))])
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS)
    assert report.counts == {"Attention": 1, "PadInfo": 1}, report.summary()
    (node,) = _attention_nodes(graph)
    assert node.attrs["causal"] == 1 and node.attrs["kv_num_heads"] == 2
    assert node.attrs["scale"] == pytest.approx(D ** -0.5)


def test_pad_info_shared_between_layers(tmp_path):
    """Two attention blocks in a row share one PadInfo."""
    m = Model(18)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    h = x
    for _ in range(2):
        q, k, v = (_split_heads(m, m.op("MatMul", h, m.const(W)), H) for W in (WQ, WK, WV))
        s = m.op("Div", m.op("MatMul", q, m.op("Transpose", k, perm=[0, 1, 3, 2])), m.const(np.float32(2.0)))
        s = m.op("Where", m.op("And", _causal_bool(m), _padding_bool(m)), s, m.const(np.float32(-1e9)))
        ctx = m.op("MatMul", m.op("Softmax", s, axis=-1), v)
        h = m.op("Reshape", m.op("Transpose", ctx, perm=[0, 2, 1, 3]), m.i64(0, 0, E))
    graph, report = _fuse_and_compare(m.save(tmp_path, [h]), BOTH_PADDINGS)
    assert report.counts == {"Attention": 2, "PadInfo": 1}, report.summary()
    pads = [n for n in graph.nodes if n.op_type == "PadInfo"]
    assert len(pads) == 1 and all(n.inputs[3] is pads[0].outputs[0] for n in _attention_nodes(graph))


# --- near misses -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,reason", [
    ({"scores_out": True}, "'scores' (MatMul) is a graph output"),
    ({"probs_out": True}, "probabilities 'probs' are a graph output"),
    ({"mask_kind": "anti"}, "mask is neither causal+padding nor padding"),
    ({"mask_kind": "window"}, "mask is neither causal+padding nor padding"),
    ({"alibi": True, "causal": False}, "additive mask has values other than 0"),
    ({"layout": "head_minor"}, "is not the [B, H, S, D] head split"),
    ({"v_scale": 2.0}, "v is scaled by 2"),
])
def test_attention_near_misses(tmp_path, kwargs, reason):
    path = build(tmp_path, **kwargs)
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS[:1])
    assert "Attention" not in report.counts, report.summary()
    assert any(reason in r for r in _reasons(report)), report.near_misses


def test_softmax_that_is_not_attention_is_quiet(tmp_path):
    """A classifier-style Softmax(x W) is no attention and no near miss either."""
    m = Model(18)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    path = m.save(tmp_path, [m.op("Softmax", m.op("MatMul", x, m.const(WQ)), axis=-1)])
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS[:1])
    assert not report.counts and not _reasons(report), report.summary()


def test_mask_from_another_input_is_a_near_miss(tmp_path):
    """Scores biased by a [B, S, S] graph input (not a [B, S] attention mask): a reason, not a crash."""
    m = Model(18)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    bias = m.input("bias", ["batch", "seq", "seq"])
    q, k, v = (_split_heads(m, m.op("MatMul", x, m.const(W)), H) for W in (WQ, WK, WV))
    s = m.op("Add", m.op("MatMul", q, m.op("Transpose", k, perm=[0, 1, 3, 2])), m.op("Unsqueeze", bias, m.i64(1)))
    ctx = m.op("MatMul", m.op("Softmax", s, axis=-1), v)
    y = m.op("Reshape", m.op("Transpose", ctx, perm=[0, 2, 1, 3]), m.i64(0, 0, E))
    plain = eetjit.load(m.save(tmp_path, [y]))
    report = fuse(plain, MY_RULES)
    assert "Attention" not in report.counts
    assert any("bias" in r for r in _reasons(report)), report.near_misses
