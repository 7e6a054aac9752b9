"""Hypothesis property tests: every reference kernel vs onnxruntime on one-node models.

Elementwise math, comparisons, logic, reductions, casts and constants. Data movement ops
live in test_ops_shape.py, the transformer blocks in test_ops_nn.py.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eetjit.reference.ops._dtypes import FLOAT, FLOAT16, DOUBLE, INT8, INT32, INT64, UINT8, BOOL, BFLOAT16, onnx_to_numpy
from eetjit.reference.ops.op_cast import cast

from .ort_helpers import SETTINGS, bools, check, floats, ints, small_int_floats

MATH = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- unary math

UNARY = {
    # op: (element range, tolerances)
    "Abs": ((-4, 4), {}),
    "Neg": ((-4, 4), {}),
    "Ceil": ((-4, 4), {}),
    "Floor": ((-4, 4), {}),
    "Relu": ((-4, 4), {}),
    "Cos": ((-6, 6), MATH),
    "Sin": ((-6, 6), MATH),
    "Exp": ((-10, 10), MATH),
    "Log": ((1e-3, 50), MATH),
    "Sqrt": ((0, 50), MATH),
    "Reciprocal": ((0.05, 20), MATH),
    "Tanh": ((-6, 6), dict(rtol=1e-5, atol=1e-5)),
    "Sigmoid": ((-12, 12), dict(rtol=1e-5, atol=1e-6)),
    "Erf": ((-4, 4), dict(rtol=1e-5, atol=1e-5)),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@given(data=st.data())
@SETTINGS
def test_unary_float(op, data):
    (lo, hi), tol = UNARY[op]
    x = data.draw(floats(lo=lo, hi=hi))
    if op == "Reciprocal":
        x = x * data.draw(st.sampled_from([1.0, -1.0])).__float__()
        x = x.astype(np.float32)
    check(op, [x], opset=13, **tol)


@pytest.mark.parametrize("op", ["Abs", "Neg", "Relu"])
@given(x=ints(dtype=np.int32))
@SETTINGS
def test_unary_int(op, x):
    check(op, [x], opset=14)


@given(x=floats(lo=-4, hi=4, dtype=np.float64))
@SETTINGS
def test_exp_float64(x):
    check("Exp", [x], opset=13, rtol=1e-12, atol=0)


SPECIALS = st.sampled_from([np.inf, -np.inf, np.nan, 0.0, 1.5, -2.0])


@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_side=4), elements=SPECIALS, fill=st.nothing()),
       neg=st.integers(0, 1), pos=st.integers(0, 1))
@SETTINGS
def test_is_inf_is_nan(x, neg, pos):
    check("IsNaN", [x], opset=20)
    check("IsInf", [x], {"detect_negative": neg, "detect_positive": pos}, opset=20)


@given(x=bools())
@SETTINGS
def test_not(x):
    check("Not", [x], opset=13)


# ----------------------------------------------------------------------------- binary math

def broadcast_pair(elements_a, elements_b=None, dtype=np.float32):
    @st.composite
    def strat(draw):
        sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4)).input_shapes
        a = draw(hnp.arrays(dtype, sa, elements=elements_a, fill=st.nothing()))
        b = draw(hnp.arrays(dtype, sb, elements=elements_a if elements_b is None else elements_b, fill=st.nothing()))
        assume(np.any(a != 0) and np.any(b != 0))
        return a, b
    return strat()


F = st.floats(-8, 8, width=32, allow_subnormal=False)
NONZERO_F = F.filter(lambda v: abs(v) > 1e-2)
I32 = st.integers(-1000, 1000)
NONZERO_I = st.integers(-50, 50).filter(lambda v: v != 0)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@given(ab=broadcast_pair(F))
@SETTINGS
def test_arith_float(op, ab):
    check(op, list(ab), opset=14, **MATH)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@given(ab=broadcast_pair(I32, NONZERO_I, dtype=np.int32))
@SETTINGS
def test_arith_int(op, ab):
    check(op, list(ab), opset=14)          # Div truncates toward zero (C semantics)


@given(ab=broadcast_pair(F, NONZERO_F))
@SETTINGS
def test_div_float(ab):
    check("Div", list(ab), opset=14, **MATH)


@given(ab=broadcast_pair(st.integers(-100, 100), NONZERO_I, dtype=np.int64), fmod=st.integers(0, 1))
@SETTINGS
def test_mod_int(ab, fmod):
    check("Mod", list(ab), {"fmod": fmod}, opset=13)


@given(ab=broadcast_pair(F, NONZERO_F))
@SETTINGS
def test_mod_float_fmod(ab):
    check("Mod", list(ab), {"fmod": 1}, opset=13, **MATH)


def test_mod_float_needs_fmod():
    with pytest.raises(ValueError, match="fmod"):
        from eetjit.reference.registry import lookup
        lookup("", "Mod")([np.ones(2, np.float32), np.ones(2, np.float32)], {}, 13)


@given(ab=broadcast_pair(st.floats(0.125, 4, width=32), st.floats(-3, 3, width=32)))
@SETTINGS
def test_pow_float(ab):
    check("Pow", list(ab), opset=15, rtol=1e-5, atol=1e-6)


@given(data=st.data())
@SETTINGS
def test_pow_mixed_types(data):
    # negative bases with integer exponents (given as int64 or as integral floats)
    x = data.draw(floats(lo=-3, hi=3, max_dims=3))
    ydt = data.draw(st.sampled_from([np.int64, np.int32, np.float32]))
    y = data.draw(hnp.arrays(ydt, x.shape[-1:], elements=st.integers(0, 4), fill=st.nothing()))
    check("Pow", [x, y], opset=15, rtol=1e-5, atol=1e-6)
    xf = data.draw(ints(lo=-5, hi=5, max_dims=2, dtype=np.int32))          # int ** float -> int
    yf = data.draw(hnp.arrays(np.float32, xf.shape, elements=st.sampled_from([0.0, 1.0, 2.0, 3.0]), fill=st.nothing()))
    check("Pow", [xf, yf], opset=15)
    xi = data.draw(ints(lo=-5, hi=5, max_dims=2))
    yi = data.draw(hnp.arrays(np.int64, xi.shape, elements=st.integers(0, 5), fill=st.nothing()))
    check("Pow", [xi, yi], opset=15)


@pytest.mark.parametrize("op", ["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"])
@given(ab=broadcast_pair(st.integers(-3, 3).map(float)), iab=broadcast_pair(st.integers(-3, 3), dtype=np.int64))
@SETTINGS
def test_compare(op, ab, iab):
    check(op, list(ab), opset=16)
    check(op, list(iab), opset=16)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
@given(ab=broadcast_pair(st.booleans(), dtype=np.bool_))
@SETTINGS
def test_logic(op, ab):
    check(op, list(ab), opset=7)


@st.composite
def broadcast_many(draw, n_min=1, n_max=4, elements=F, dtype=np.float32):
    n = draw(st.integers(n_min, n_max))
    shp = draw(hnp.mutually_broadcastable_shapes(num_shapes=n, min_dims=0, max_dims=3, max_side=3)).input_shapes
    arrs = [draw(hnp.arrays(dtype, s, elements=elements, fill=st.nothing())) for s in shp]
    assume(any(np.any(a != 0) for a in arrs))
    return arrs


@pytest.mark.parametrize("op", ["Max", "Min"])
@given(xs=broadcast_many(), ixs=broadcast_many(elements=st.integers(-9, 9), dtype=np.int32))
@SETTINGS
def test_max_min(op, xs, ixs):
    check(op, xs, opset=13)
    check(op, ixs, opset=13)


@st.composite
def where_args(draw):
    sc, sx, sy = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, max_side=3)).input_shapes
    c = draw(hnp.arrays(np.bool_, sc, elements=st.booleans(), fill=st.nothing()))
    x = draw(floats(sx))
    y = draw(floats(sy))
    return c, x, y


@given(args=where_args())
@SETTINGS
def test_where(args):
    check("Where", list(args), opset=16)


@given(x=floats(lo=-6, hi=6), lo=st.one_of(st.none(), st.floats(-5, 5, width=32)),
       hi=st.one_of(st.none(), st.floats(-5, 5, width=32)))
@SETTINGS
def test_clip(x, lo, hi):
    as_t = lambda v: None if v is None else np.array(v, dtype=np.float32)  # noqa: E731
    check("Clip", [x, as_t(lo), as_t(hi)], opset=13)   # lo > hi gives hi everywhere
    attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    if lo is None or hi is None or lo <= hi:           # ORT rejects min > max in the attribute form
        check("Clip", [x], attrs, opset=6)


@given(x=ints(dtype=np.int32), lo=st.integers(-10, 0), hi=st.integers(0, 10))
@SETTINGS
def test_clip_int(x, lo, hi):
    check("Clip", [x, np.array(lo, np.int32), np.array(hi, np.int32)], opset=13)


# ----------------------------------------------------------------------------- reductions

@st.composite
def reduce_args(draw, ints_too=False):
    x = draw(floats(lo=-5, hi=5, max_dims=4) if not ints_too else ints(lo=-20, hi=20, max_dims=4))
    r = x.ndim
    axes = draw(st.one_of(st.none(), st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                                             unique_by=lambda a: a % r)))
    keepdims = draw(st.integers(0, 1))
    return x, axes, keepdims


REDUCE_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18}


@pytest.mark.parametrize("op", sorted(REDUCE_SINCE))
@given(args=reduce_args(), iargs=reduce_args(ints_too=True))
@SETTINGS
def test_reduce(op, args, iargs):
    since = REDUCE_SINCE[op]
    for x, axes, keepdims in (args, iargs):
        tol = {}
        if x.dtype.kind == "f" and op in ("ReduceSum", "ReduceMean"):
            # a float32 sum's rounding scales with the sum of |x| over what it reduces, not with the result:
            # cancellation (a result of 0.02 from values up to 5) leaves ORT and NumPy, which add in different
            # orders, ~1e-6 apart. The absolute tolerance is taken on that scale (1e-6 of it: ~2x the bound of
            # pairwise float32 summation for these sizes).
            mag = np.abs(x.astype(np.float64)).sum(axis=None if axes is None else tuple(axes))
            if op == "ReduceMean" and mag.size:
                mag = mag / (x.size // mag.size)
            tol = dict(MATH, atol=MATH["atol"] * max(1.0, float(np.max(mag, initial=0.0))))
        # input form
        ax = None if axes is None else np.array(axes, np.int64)
        check(op, [x, ax], {"keepdims": keepdims}, opset=since, **tol)
        # attribute form (older opset)
        attrs = {"keepdims": keepdims} if axes is None else {"keepdims": keepdims, "axes": axes}
        check(op, [x], attrs, opset=since - 2 if since == 13 else 13, **tol)


@pytest.mark.parametrize("op", sorted(REDUCE_SINCE))
@given(x=floats(max_dims=3))
@SETTINGS
def test_reduce_noop_empty_axes(op, x):
    since = REDUCE_SINCE[op]
    empty = np.zeros((0,), np.int64)
    check(op, [x, empty], {"noop_with_empty_axes": 1}, opset=since)
    check(op, [x, empty], {"noop_with_empty_axes": 0, "keepdims": 0}, opset=since, **MATH)


@given(data=st.data())
@SETTINGS
def test_arg_max(data):
    x = data.draw(st.one_of(small_int_floats(), ints(lo=-3, hi=3, dtype=np.int32)))   # lots of ties
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    keepdims = data.draw(st.integers(0, 1))
    last = data.draw(st.integers(0, 1))
    check("ArgMax", [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last}, opset=13)


@given(data=st.data())
@SETTINGS
def test_cum_sum(data):
    x = data.draw(st.one_of(floats(), ints(dtype=np.int32)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    adt = data.draw(st.sampled_from([np.int32, np.int64]))
    attrs = {"exclusive": data.draw(st.integers(0, 1)), "reverse": data.draw(st.integers(0, 1))}
    tol = MATH if x.dtype.kind == "f" else {}
    check("CumSum", [x, np.array(axis, adt)], attrs, opset=14, **tol)


# ----------------------------------------------------------------------------- casts & constants

CAST_FROM_FLOAT = [FLOAT16, DOUBLE, INT32, INT64, INT8, BOOL]


@pytest.mark.parametrize("to", CAST_FROM_FLOAT + [UINT8])
@given(x=floats(lo=-100, hi=100))
@SETTINGS
def test_cast_from_float(to, x):
    if to == UINT8:
        x = np.abs(x)                       # negative -> unsigned is undefined in ONNX
    check("Cast", [x], {"to": to}, opset=19)
    check("CastLike", [x, np.zeros((1,), onnx_to_numpy(to))], opset=19)


@pytest.mark.parametrize("to", [FLOAT, DOUBLE, FLOAT16, INT8, BOOL])
@given(x=st.one_of(ints(lo=-100, hi=100, dtype=np.int64), ints(lo=-100, hi=100, dtype=np.int32), bools()))
@SETTINGS
def test_cast_from_int_bool(to, x):
    check("Cast", [x], {"to": to}, opset=13)


@given(x=floats(lo=-1000, hi=1000))
@SETTINGS
def test_cast_bfloat16_roundtrip(x):
    # onnxruntime's python binding cannot return bfloat16, so compare float32 -> bf16 -> float32
    # against a two-Cast model built by hand.
    import onnx
    import onnxruntime as ort
    from onnx import helper
    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["b"], to=BFLOAT16), helper.make_node("Cast", ["b"], ["y"], to=FLOAT)],
        "g", [helper.make_tensor_value_info("x", FLOAT, x.shape)], [onnx.ValueInfoProto(name="y")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = cast(cast(x, BFLOAT16), FLOAT)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@given(data=st.data())
@SETTINGS
def test_constant(data):
    t = data.draw(st.one_of(floats(), ints(dtype=np.int32), bools()))
    check("Constant", [], {"value": t}, opset=13)
    f = data.draw(st.floats(-5, 5, width=32))
    check("Constant", [], {"value_float": f}, opset=13)
    check("Constant", [], {"value_floats": data.draw(st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=4))}, opset=13)
    check("Constant", [], {"value_int": data.draw(st.integers(-9, 9))}, opset=13)
    check("Constant", [], {"value_ints": data.draw(st.lists(st.integers(-9, 9), min_size=1, max_size=4))}, opset=13)


@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
       value=st.one_of(st.none(), floats(shape=(1,)), ints(shape=(1,), dtype=np.int64), bools(shape=(1,))))
@SETTINGS
def test_constant_of_shape(shape, value):
    attrs = {} if value is None else {"value": value}
    check("ConstantOfShape", [np.array(shape, np.int64)], attrs, opset=20)


@given(x=floats(min_dims=0, max_side=3), start=st.one_of(st.none(), st.integers(-6, 6)),
       end=st.one_of(st.none(), st.integers(-6, 6)))
@SETTINGS
def test_shape_size_identity(x, start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    check("Shape", [x], attrs, opset=19)
    check("Shape", [x], opset=13)
    check("Size", [x], opset=19)
    check("Identity", [x], opset=19)


@given(start=st.integers(-20, 20), limit=st.integers(-20, 20), delta=st.integers(-5, 5).filter(bool),
       dtype=st.sampled_from([np.int32, np.int64]))
@SETTINGS
def test_range_int(start, limit, delta, dtype):
    check("Range", [np.array(start, dtype), np.array(limit, dtype), np.array(delta, dtype)], opset=11)


@given(start=st.integers(-40, 40), limit=st.floats(-10, 10, width=32),
       delta=st.integers(-8, 8).filter(bool))
@SETTINGS
def test_range_float(start, limit, delta):
    # start and delta are multiples of 1/4, so every start + i*delta is exact in float32
    s, d = np.float32(start / 4), np.float32(delta / 4)
    assume(abs((limit - s) / d) < 200)
    check("Range", [np.array(s), np.array(limit, np.float32), np.array(d)], opset=11)


@given(x=floats(), ratio=st.floats(0.0, 0.9))
@SETTINGS
def test_dropout_inference(x, ratio):
    check("Dropout", [x, np.array(ratio, np.float32), np.array(False)], opset=13, n_outputs=2)
    check("Dropout", [x], opset=13, n_outputs=2)
    check("Dropout", [x], {"ratio": ratio}, opset=10, n_outputs=2)   # ORT: all-False mask before 12
    check("Dropout", [x], {"ratio": ratio}, opset=7, n_outputs=2)    # float mask, all zeros


# ----------------------------------------------------------------------------- float16

F16_OPS = {
    # op: (opset, arity, element range)
    "Add": (14, 2, (-8, 8)), "Sub": (14, 2, (-8, 8)), "Mul": (14, 2, (-8, 8)), "Div": (14, 2, (0.25, 8)),
    "Relu": (14, 1, (-8, 8)), "Neg": (13, 1, (-8, 8)), "Exp": (13, 1, (-4, 4)), "Log": (13, 1, (0.25, 8)),
    "Sqrt": (13, 1, (0, 8)), "Tanh": (13, 1, (-4, 4)), "Sigmoid": (13, 1, (-8, 8)), "Sin": (13, 1, (-4, 4)),
    "Cos": (13, 1, (-4, 4)), "Erf": (13, 1, (-3, 3)), "Softmax": (13, 1, (-8, 8)), "Max": (13, 2, (-8, 8)),
}


@pytest.mark.parametrize("op", sorted(F16_OPS))
@given(data=st.data())
@SETTINGS
def test_float16_keeps_dtype(op, data):
    # half-precision inputs: computed wider, rounded once; allow one float16 ulp of difference
    opset, arity, (lo, hi) = F16_OPS[op]
    shape = data.draw(hnp.array_shapes(max_dims=3, max_side=4))
    xs = [data.draw(floats(shape=shape, lo=lo, hi=hi, dtype=np.float16)) for _ in range(arity)]
    check(op, xs, opset=opset, rtol=1e-3, atol=1e-3)


def test_every_required_op_is_registered():
    from eetjit.reference.registry import lookup
    required = """Abs Add And ArgMax Cast CastLike Ceil Clip Concat Constant ConstantOfShape Cos CumSum Div
        Dropout Einsum Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm Greater
        GreaterOrEqual Identity IsInf IsNaN LayerNormalization Less LessOrEqual Log MatMul Max Min Mod Mul
        Neg Not Or Pad Pow Range Reciprocal ReduceMax ReduceMean ReduceSum ReduceMin Relu Reshape
        RMSNormalization Shape Sigmoid Sin Size Slice Softmax Split Sqrt Squeeze Sub Tanh Tile Transpose
        Trilu Unsqueeze Where Xor Attention RotaryEmbedding""".split()
    missing = [op for op in required if lookup("", op) is None or lookup("ai.onnx", op) is None]
    assert not missing, f"unregistered ops: {missing}"
