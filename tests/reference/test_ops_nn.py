"""Matrix and transformer-block ops vs onnxruntime (float32, tolerance-based).

onnxruntime 1.32 implements Attention (23-25), RMSNormalization (23) and RotaryEmbedding
(23) on CPU, so they are compared with ORT like every other op. The one thing ORT does not
do is the opset-24 "short attn_mask padded with -inf" rule; that case is checked against
an independent NumPy formula in test_attention_short_mask_opset24.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eetjit.reference.registry import lookup

from .ort_helpers import SETTINGS, check, floats, ints

MATH = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- matmul family

@given(data=st.data())
@SETTINGS
def test_mat_mul(data):
    sa, sb = data.draw(hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2, max_side=4)).input_shapes
    a, b = data.draw(floats(shape=sa)), data.draw(floats(shape=sb))
    check("MatMul", [a, b], opset=13, **MATH)
    ia, ib = data.draw(ints(shape=sa, dtype=np.int64)), data.draw(ints(shape=sb, dtype=np.int64))
    check("MatMul", [ia, ib], opset=13)


@given(data=st.data())
@SETTINGS
def test_gemm(data):
    m, k, n = (data.draw(st.integers(1, 5)) for _ in range(3))
    ta, tb = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))
    a = data.draw(floats(shape=(k, m) if ta else (m, k)))
    b = data.draw(floats(shape=(n, k) if tb else (k, n)))
    c_shape = data.draw(st.sampled_from([None, (), (n,), (1, n), (m, 1), (m, n)]))
    c = None if c_shape is None else data.draw(floats(shape=c_shape))
    attrs = {"transA": ta, "transB": tb,
             "alpha": data.draw(st.sampled_from([1.0, 0.5, -2.0])), "beta": data.draw(st.sampled_from([1.0, 0.0, 3.0]))}
    check("Gemm", [a, b, c], attrs, opset=13, **MATH)


EQUATIONS = [
    # (equation, operand shapes as letter strings; '.' dims are drawn once for the ellipsis)
    "ij,jk->ik", "bij,bjk->bik", "bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd", "i,i->", "ij->ji", "ii->i",
    "ij,ij->ij", "bi,bj->bij", "ab,cb", "ba", "ij,jk", "...ij,...jk->...ik", "bsd,hd->bsh", "i,j->ij",
]


@pytest.mark.parametrize("equation", EQUATIONS)
@given(data=st.data())
@SETTINGS
def test_einsum(equation, data):
    lhs = equation.split("->")[0]
    sizes = {c: data.draw(st.integers(1, 4)) for c in sorted(set(lhs) - {",", "."})}
    ell = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    shapes = [tuple(x for part in term.split("...") for x in ([sizes[c] for c in part])) if "..." not in term
              else ell + tuple(sizes[c] for c in term.replace("...", "")) for term in lhs.split(",")]
    ops = [data.draw(floats(shape=s)) for s in shapes]
    check("Einsum", ops, {"equation": equation}, opset=12, **MATH)


# ----------------------------------------------------------------------------- softmax & norms

@given(data=st.data())
@SETTINGS
def test_softmax(data):
    x = data.draw(floats(lo=-20, hi=20, max_dims=4))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check("Softmax", [x], {"axis": axis}, opset=13, rtol=1e-5, atol=1e-6)
    check("Softmax", [x], {"axis": axis}, opset=11, rtol=1e-5, atol=1e-6)   # 2-D coercion semantics
    check("Softmax", [x], opset=11, rtol=1e-5, atol=1e-6) if x.ndim >= 2 else None


@given(x=floats(lo=-6, hi=6), approximate=st.sampled_from(["none", "tanh"]))
@SETTINGS
def test_gelu(x, approximate):
    check("Gelu", [x], {"approximate": approximate}, opset=20, rtol=1e-5, atol=1e-5)


@st.composite
def norm_args(draw):
    x = draw(floats(lo=-5, hi=5, min_dims=1, max_dims=4, max_side=5))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    norm_shape = x.shape[axis:]
    # scale/bias: the normalised shape, or a broadcastable shorter / 1-padded version of it
    trim = draw(st.integers(0, len(norm_shape) - 1))
    s_shape = tuple(1 if draw(st.booleans()) else d for d in norm_shape[trim:])
    scale = draw(floats(shape=s_shape, lo=-2, hi=2))
    eps = draw(st.sampled_from([1e-5, 1e-6, 0.1]))
    return x, axis, scale, eps


@given(args=norm_args(), with_bias=st.booleans())
@SETTINGS
def test_layer_normalization(args, with_bias):
    x, axis, scale, eps = args
    bias = scale[::-1].copy() + np.float32(0.5) if with_bias else None
    check("LayerNormalization", [x, scale, bias], {"axis": axis, "epsilon": eps}, opset=17,
          n_outputs=3, rtol=1e-4, atol=1e-4)


@given(args=norm_args())
@SETTINGS
def test_rms_normalization(args):
    x, axis, scale, eps = args
    check("RMSNormalization", [x, scale], {"axis": axis, "epsilon": eps}, opset=23, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- attention

@st.composite
def attention_args(draw):
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.integers(1, 3))                  # MHA, GQA, MQA
    sq = draw(st.integers(1, 4))
    skv = draw(st.integers(1, 4))
    past = draw(st.sampled_from([0, 0, 2]))
    causal = draw(st.booleans())
    if past and causal:
        # With a cache, the spec's causal frontier is j <= i + past_len; onnxruntime uses
        # j <= i + (total - Sq) instead. They agree in the real decode/prefill case where K/V
        # carry exactly the new query tokens (Skv == Sq), so only that case is compared.
        skv = sq
    d = draw(st.sampled_from([2, 4, 8]))
    dv = draw(st.sampled_from([d, 3]))
    three_d = draw(st.booleans())
    total = past + skv
    q = draw(floats(shape=(b, hq, sq, d), lo=-2, hi=2))
    k = draw(floats(shape=(b, hkv, skv, d), lo=-2, hi=2))
    v = draw(floats(shape=(b, hkv, skv, dv), lo=-2, hi=2))
    attrs = {}
    if three_d:
        q = q.transpose(0, 2, 1, 3).reshape(b, sq, hq * d)
        k = k.transpose(0, 2, 1, 3).reshape(b, skv, hkv * d)
        v = v.transpose(0, 2, 1, 3).reshape(b, skv, hkv * dv)
        attrs.update(q_num_heads=hq, kv_num_heads=hkv)
    pk = draw(floats(shape=(b, hkv, past, d))) if past else None
    pv = draw(floats(shape=(b, hkv, past, dv))) if past else None
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    mask = None
    if mask_kind != "none":
        full = (b, hq, sq, total)
        mshape = draw(st.sampled_from([full[2:], (1, 1) + full[2:], (b, 1) + full[2:], full]))
        if mask_kind == "bool":
            mask = draw(hnp.arrays(np.bool_, mshape, elements=st.booleans(), fill=st.nothing()))
        else:
            mask = draw(floats(shape=mshape, lo=-3, hi=3))
    if causal:
        attrs["is_causal"] = 1
    if draw(st.booleans()):
        attrs["scale"] = draw(st.sampled_from([0.1, 0.5, 1.3]))
    if draw(st.booleans()):
        attrs["softcap"] = draw(st.sampled_from([1.0, 5.0]))
    attrs["qk_matmul_output_mode"] = draw(st.integers(0, 3))
    return [q, k, v, mask, pk, pv], attrs


def _masked_as_lowest(i, a):
    # qk_matmul_output (output 3) in mode 2: the spec's masked bias is -inf, onnxruntime
    # writes the lowest finite float instead; treat the two as the same value.
    if i == 3:
        return np.where(np.isneginf(a), np.finfo(a.dtype).min, a).astype(a.dtype)
    return a


@given(args=attention_args())
@SETTINGS
def test_attention(args):
    inputs, attrs = args
    check("Attention", inputs, attrs, opset=23, n_outputs=4, normalize=_masked_as_lowest, **MATH)


@given(args=attention_args(), valid=st.data())
@SETTINGS
def test_attention_opset24_25(args, valid):
    inputs, attrs = args
    q, k, v, mask = inputs[:4]
    assume(inputs[4] is None)                          # nonpad_kv_seqlen excludes past/present
    b = q.shape[0]
    skv = k.shape[-2] if k.ndim == 4 else k.shape[1]
    nonpad = np.array(valid.draw(st.lists(st.integers(1, skv), min_size=b, max_size=b)), np.int64)
    attrs = {k_: v_ for k_, v_ in attrs.items() if k_ != "qk_matmul_output_mode"}
    check("Attention", [q, k, v, mask, None, None, nonpad], attrs, opset=24, **MATH)
    left, right = valid.draw(st.integers(-1, 3)), valid.draw(st.integers(-1, 3))
    check("Attention", [q, k, v, mask], {**attrs, "left_window_size": left, "right_window_size": right},
          opset=25, **MATH)


def _attention_numpy(q, k, v, bias):
    # independent formula for one 4-D MHA case: softmax(q k^T / sqrt(d) + bias) v
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) / math.sqrt(q.shape[-1]) + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v.astype(np.float64))


@given(q=floats(shape=(1, 2, 3, 4)), k=floats(shape=(1, 2, 5, 4)), v=floats(shape=(1, 2, 5, 4)),
       mask=hnp.arrays(np.bool_, (3, 3), elements=st.booleans()))
@SETTINGS
def test_attention_short_mask_opset24(q, k, v, mask):
    # Opset 24: an attn_mask whose last dim is shorter than total_sequence_length is padded
    # with -inf (False). onnxruntime 1.32 rejects such masks, so compare to NumPy instead.
    mask = mask.copy()
    mask[:, 0] = True                                   # keep every row attendable
    y = lookup("", "Attention")([q, k, v, mask], {}, 24)[0]
    padded = np.concatenate([mask, np.zeros((3, 2), bool)], axis=1)
    want = _attention_numpy(q, k, v, np.where(padded, 0.0, -np.inf))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_attention_causal_offset_is_past_length():
    # Spec: with past_key, query i sees key j iff j <= i + past_len, even when K brings more
    # new tokens than Q (onnxruntime 1.32 uses i + total - Sq here, so compare to NumPy).
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 1, 4)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 2, 4)).astype(np.float32) for _ in range(2))
    pk, pv = (rng.standard_normal((1, 2, 2, 4)).astype(np.float32) for _ in range(2))
    y = lookup("", "Attention")([q, k, v, None, pk, pv], {"is_causal": 1}, 23)[0]
    bias = np.array([0.0, 0.0, 0.0, -np.inf])           # total 4, past 2: keys 0..2 visible
    want = _attention_numpy(q, np.concatenate([pk, k], 2), np.concatenate([pv, v], 2), bias)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_attention_fully_masked_row_is_zero():
    q = np.ones((1, 1, 2, 4), np.float32)
    kv = np.ones((1, 1, 3, 4), np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    y, _, _, qk = lookup("", "Attention")([q, kv, kv, mask], {"qk_matmul_output_mode": 3}, 23)
    np.testing.assert_array_equal(y[0, 0, 1], 0)
    np.testing.assert_array_equal(qk[0, 0, 1], 0)
    check("Attention", [q, kv, kv, mask], {}, opset=23, **MATH)


# ----------------------------------------------------------------------------- rotary embedding

@st.composite
def rotary_args(draw):
    b, h, s = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    d = draw(st.sampled_from([2, 4, 8]))
    r = draw(st.sampled_from([0] + [x for x in (2, 4) if x < d]))
    half = (r or d) // 2
    x = draw(floats(shape=(b, h, s, d)))
    attrs = {"interleaved": draw(st.integers(0, 1)), "rotary_embedding_dim": r}
    if draw(st.booleans()):
        x = x.transpose(0, 2, 1, 3).reshape(b, s, h * d)
        attrs["num_heads"] = h
    angles = draw(floats(shape=(6, half), lo=-3, hi=3))
    if draw(st.booleans()):
        pos = draw(hnp.arrays(np.int64, (b, s), elements=st.integers(0, 5), fill=st.nothing()))
        return [x, np.cos(angles), np.sin(angles), pos], attrs
    ang = draw(floats(shape=(b, s, half), lo=-3, hi=3))
    return [x, np.cos(ang), np.sin(ang)], attrs


@given(args=rotary_args())
@SETTINGS
def test_rotary_embedding(args):
    inputs, attrs = args
    check("RotaryEmbedding", inputs, attrs, opset=23, **MATH)
