"""Rotary rule (rotary.py): rotate_half spellings (Slice/Split, Neg/Mul -1, scaled cos/sin, BHSD/BSHD) and the
ONNX RotaryEmbedding op (cos/sin given per token, or caches indexed by position_ids), feeding the attention
rule; near misses for everything that is almost rotary. Fixture counts are in test_attention.py."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from test_attention import (BOTH_PADDINGS, D, E, H, WK, WO, WQ, WV, Model, _fuse_and_compare, _padding_bool,
                            _reasons, _seq_range, _split_heads, build)

INV_FREQ = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)


def _cos_sin(m, scale_cos=1.0, scale_sin=1.0, layout="BHSD", doubled=True):
    """HF-style tables: positions = arange(S)[None]; f = pos ⊗ inv_freq; cos/sin(concat(f, f)) * scaling."""
    if getattr(m, "_tables", None) is not None:
        return m._tables
    pos = m.op("Unsqueeze", _seq_range(m), m.i64(0))                        # [1, S] int64
    posf = m.op("Cast", m.op("Unsqueeze", pos, m.i64(2)), to=TensorProto.FLOAT)  # [1, S, 1]
    f = m.op("Mul", posf, m.const(INV_FREQ))                                 # [1, S, D/2]
    emb = m.op("Concat", f, f, axis=-1) if doubled else f
    cos, sin = m.op("Cos", emb), m.op("Sin", emb)
    if scale_cos != 1.0:
        cos = m.op("Mul", cos, m.const(np.float32(scale_cos)))
    if scale_sin != 1.0:
        sin = m.op("Mul", sin, m.const(np.float32(scale_sin)))
    axis = 1 if layout == "BHSD" else 2
    m._tables = (m.op("Unsqueeze", cos, m.i64(axis)), m.op("Unsqueeze", sin, m.i64(axis)))
    return m._tables


def rotate(form="slice", scale_cos=1.0, scale_sin=1.0, swap=False, layout="BHSD"):
    """A `rot(m, x, heads)` for test_attention.build: x * cos + rotate_half(x) * sin on x [B, H, S, D]."""
    def rot(m, x, heads):
        if layout == "BSHD":  # rotate before the head transpose: undo it, rotate, redo it
            x = m.op("Transpose", x, perm=[0, 2, 1, 3])
        cos, sin = _cos_sin(m, scale_cos, scale_sin, layout)
        if form == "split":
            x1, x2 = m.op("Split", x, m.i64(D // 2, D // 2), axis=-1, n_out=2)
        else:
            x1 = m.op("Slice", x, m.i64(0), m.i64(D // 2), m.i64(-1))
            x2 = m.op("Slice", x, m.i64(D // 2), m.i64(2 ** 62), m.i64(-1))
        if swap:
            x1, x2 = x2, x1
        neg = m.op("Mul", x2, m.const(np.float32(-1))) if form == "mul" else m.op("Neg", x2)
        y = m.op("Add", m.op("Mul", x, cos), m.op("Mul", m.op("Concat", neg, x1, axis=-1), sin))
        if layout == "BSHD":
            y = m.op("Transpose", y, perm=[0, 2, 1, 3])
        return y
    return rot


def _rotary_nodes(graph):
    return [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Rotary"]


@pytest.mark.parametrize("form,layout,scaling,kv", [
    ("slice", "BHSD", 1.0, H),
    ("split", "BHSD", 0.75, 2),
    ("mul", "BSHD", 1.0, H),
])
def test_rotary_feeds_attention(tmp_path, form, layout, scaling, kv):
    path = build(tmp_path, rot=rotate(form, scaling, scaling, layout=layout), kv=kv, k_perm="two_transposes")
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS)
    assert report.counts == {"Rotary": 2, "Attention": 1, "PadInfo": 1}, report.summary()
    q_rot, k_rot = sorted(_rotary_nodes(graph), key=lambda n: -n.attrs["num_heads"])
    assert (q_rot.attrs["num_heads"], k_rot.attrs["num_heads"]) == (H, kv)
    assert q_rot.attrs["head_dim"] == D and q_rot.attrs["scaling"] == pytest.approx(scaling)
    np.testing.assert_array_equal(q_rot.inputs[2].const, INV_FREQ)
    assert q_rot.inputs[1] is k_rot.inputs[1] and q_rot.inputs[2] is k_rot.inputs[2]   # shared positions/freqs
    (attn,) = [n for n in graph.nodes if n.op_type == "Attention"]
    assert attn.inputs[0] is q_rot.outputs[0] and attn.inputs[1] is k_rot.outputs[0]
    assert not ({"Cos", "Sin", "Neg", "Slice", "Split", "Concat"} & set(report.unfused)), report.summary()


def test_rotary_alone_keeps_the_layout(tmp_path):
    """Without the attention rule the rotated value goes back to [B, H, S, D] for the unfused attention."""
    from eetjit.rewrite.rules import rotary
    path = build(tmp_path, rot=rotate(), k_perm="two_transposes")
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS, rules=rotary.RULES)
    assert report.counts == {"Rotary": 2}, report.summary()


def _rotary_embedding_model(position_ids: bool, interleaved: int = 0, opset: int = 23):
    m = Model(opset)
    x = m.input("x", ["batch", "seq", E])
    m.input("attention_mask", ["batch", "seq"], TensorProto.INT64)
    q, k, v = (_split_heads(m, m.op("MatMul", x, m.const(W)), H) for W in (WQ, WK, WV))
    if position_ids:
        pid = m.input("position_ids", ["batch", "seq"], TensorProto.INT64)
        ang = np.arange(64, dtype=np.float32)[:, None] * INV_FREQ[None]
        cos, sin = m.const(np.cos(ang).astype(np.float32)), m.const(np.sin(ang).astype(np.float32))
        q, k = (m.op("RotaryEmbedding", t, cos, sin, pid, interleaved=interleaved) for t in (q, k))
    else:
        cos, sin = (m.op("Squeeze", t, m.i64(1)) for t in _cos_sin(m, doubled=False))  # [1, S, D/2]
        q, k = (m.op("RotaryEmbedding", t, cos, sin, interleaved=interleaved) for t in (q, k))
    y = m.op("Attention", q, k, v, _padding_bool(m), is_causal=1)
    y = m.op("Reshape", m.op("Transpose", y, perm=[0, 2, 1, 3]), m.i64(0, 0, E))
    return m, m.op("MatMul", y, m.const(WO))


@pytest.mark.parametrize("position_ids", [False, True])
def test_onnx_rotary_embedding(tmp_path, position_ids):
    m, y = _rotary_embedding_model(position_ids)
    feeds = [dict(f) for f in BOTH_PADDINGS]
    if position_ids:
        for f in feeds:
            f["position_ids"] = np.maximum(np.cumsum(f["attention_mask"], 1) - 1, 0)
    graph, report = _fuse_and_compare(m.save(tmp_path, [y]), feeds)
    assert report.counts == {"Rotary": 2, "Attention": 1, "PadInfo": 1}, report.summary()
    np.testing.assert_allclose(_rotary_nodes(graph)[0].inputs[2].const, INV_FREQ, rtol=1e-5)


# --- near misses -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rot,reason", [
    (rotate(swap=True), "the Concat is not rotate_half(x)"),
    (rotate(scale_sin=0.5), "are not cos/sin(positions * inv_freq) (halves repeated) times a scaling"),
])
def test_rotary_near_misses(tmp_path, rot, reason):
    path = build(tmp_path, rot=rot, k_perm="two_transposes")
    graph, report = _fuse_and_compare(path, BOTH_PADDINGS[:1])
    assert "Rotary" not in report.counts, report.summary()
    assert any(reason in r for r in _reasons(report, "Rotary/")), report.near_misses
    # and the attention rule says why it cannot read q: it is not a head split of a projection any more
    assert any("not the [B, H, S, D] head split" in r or "not a [B, S, heads*head_dim]" in r
               for r in _reasons(report)), report.near_misses


def test_interleaved_rotary_embedding_is_a_near_miss(tmp_path):
    m, y = _rotary_embedding_model(False, interleaved=1)
    graph, report = _fuse_and_compare(m.save(tmp_path, [y]), BOTH_PADDINGS[:1])
    assert "Rotary" not in report.counts
    assert any("interleaved" in r for r in _reasons(report, "Rotary/")), report.near_misses
