"""Linear (BLAS GEMM + templated bias/activation epilogue, split) and SwiGLU against eetjit.fused."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eetjit import InputError
from eetjit.backends.cpu import ACTIVATIONS

from .helpers import SETTINGS, assert_close, reference, single_node, values

seeds = st.integers(0, 2**32 - 1)
leads = st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)


# GELU-erf uses math.erf in float32 (libm erff, < 2 ulp) and the reference erf in float64: the shared
# rtol/atol of 1e-5 holds for every activation, no approximation is involved.
@SETTINGS
@given(N=st.sampled_from((1, 7, 33)), K=st.integers(1, 40), lead=leads, act=st.sampled_from(ACTIVATIONS),
       has_bias=st.booleans(), seed=seeds)
def test_linear(backend, N, K, lead, act, has_bias, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, lead + (K,)), values(rng, (K, N)) / np.float32(np.sqrt(K))]
    if has_bias:
        inputs.append(values(rng, (N,)))
    g, node = single_node("Linear", inputs, {"activation": act}, const={1, 2})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


SPLITS = ([8, 8, 8], [16, 8, 8], [5, 3])


@SETTINGS
@given(split=st.sampled_from(SPLITS), K=st.integers(1, 24), lead=leads, seed=seeds)
def test_linear_split(backend, split, K, lead, seed):
    rng = np.random.default_rng(seed)
    N = sum(split)
    inputs = [values(rng, lead + (K,)), values(rng, (K, N)) / np.float32(np.sqrt(K)), values(rng, (N,))]
    g, node = single_node("Linear", inputs, {"split": split}, const={1, 2}, outputs=len(split))
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


def test_linear_split_into_given_buffers(backend):
    rng = np.random.default_rng(2)
    inputs = [values(rng, (2, 3, 6)), values(rng, (6, 24)), values(rng, (24,))]
    g, node = single_node("Linear", inputs, {"split": [8, 8, 8], "activation": "gelu_tanh"}, const={1, 2},
                          outputs=3)
    out = [np.empty((2, 3, 8), np.float32) for _ in range(3)]
    got = backend.prepare(node, g)(inputs, out=out)
    assert all(a is b for a, b in zip(got, out))
    assert_close(got, reference(g, node, inputs))


def test_linear_rejects_unknown_activation(backend):
    rng = np.random.default_rng(3)
    inputs = [values(rng, (2, 4)), values(rng, (4, 4))]
    g, node = single_node("Linear", inputs, {"activation": "swish2"}, const={1})
    with pytest.raises(ValueError, match="swish2"):
        backend.prepare(node, g)


@SETTINGS
@given(F=st.sampled_from((3, 32)), K=st.integers(1, 24), lead=leads, gate_bias=st.booleans(),
       up_bias=st.booleans(), seed=seeds)
def test_swiglu(backend, F, K, lead, gate_bias, up_bias, seed):
    rng = np.random.default_rng(seed)
    w = np.float32(1 / np.sqrt(K))   # unit-scale GEMM results, as trained weights give
    inputs = [values(rng, lead + (K,)), values(rng, (K, F)) * w, values(rng, (K, F)) * w,
              values(rng, (F,)) if gate_bias else None, values(rng, (F,)) if up_bias else None]
    while inputs and inputs[-1] is None:
        inputs.pop()
    g, node = single_node("SwiGLU", inputs, {}, const={1, 2, 3, 4})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


# --- 16-bit weights (float16/bfloat16 sessions): linear_rows for few rows, BLAS on the rounded weights above --
HALF = ("float16", "bfloat16")


@pytest.fixture(scope="module")
def half_backends():
    from eetjit.backends.cpu import CpuBackend
    return {d: CpuBackend(dtype=d, verbose=False) for d in HALF}


def rounded(w, dtype):
    """The float32 values a 16-bit session computes with: w rounded to `dtype` (to nearest even)."""
    import ml_dtypes
    return w.astype(np.float16 if dtype == "float16" else ml_dtypes.bfloat16).astype(np.float32)


def gemm_input(x, dtype):
    """x as a session's GEMM reads it: bfloat16 sessions round it too (float16 ones keep float32)."""
    return rounded(x, dtype) if dtype == "bfloat16" else x


# M up to 40 crosses ROWS_KERNEL_MAX_ROWS (32) (float16: linear_rows, then BLAS) and the 4-row tile of
# linear_bf16 (bfloat16 on AVX512-BF16: linear_rows below 4 rows); N and K not multiples of the tiles (4 x 6), the
# blocks or 32 (bfloat16 pairs). Both sides compute with the same rounded values, so float32 tolerances hold.
@SETTINGS
@given(dtype=st.sampled_from(HALF), N=st.sampled_from((1, 7, 70)), K=st.integers(1, 50), M=st.integers(1, 40),
       act=st.sampled_from(ACTIVATIONS), has_bias=st.booleans(), seed=seeds)
def test_linear_16bit_weights(half_backends, dtype, N, K, M, act, has_bias, seed):
    rng = np.random.default_rng(seed)
    w = values(rng, (K, N)) / np.float32(np.sqrt(K))
    inputs = [values(rng, (M, K)), w] + ([values(rng, (N,))] if has_bias else [])
    g, node = single_node("Linear", inputs, {"activation": act}, const={1, 2})
    want = reference(g, node, [gemm_input(inputs[0], dtype), rounded(w, dtype)] + inputs[2:])
    got = half_backends[dtype].prepare(node, g)(inputs)
    assert_close(got, want)
    if act == "none":   # and not the unrounded weights (float16: ~1e-4 relative away; bfloat16: ~1e-3)
        assert not np.allclose(got[0], reference(g, node, inputs)[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("M", (3, 40))
def test_linear_16bit_weights_split(half_backends, dtype, M):
    rng = np.random.default_rng(M)
    w = values(rng, (6, 24))
    inputs = [values(rng, (M, 6)), w, values(rng, (24,))]
    g, node = single_node("Linear", inputs, {"split": [8, 8, 8], "activation": "gelu_tanh"}, const={1, 2},
                          outputs=3)
    assert_close(half_backends[dtype].prepare(node, g)(inputs),
                 reference(g, node, [gemm_input(inputs[0], dtype), rounded(w, dtype), inputs[2]]))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("M", (2, 33))
def test_swiglu_16bit_weights(half_backends, dtype, M):
    rng = np.random.default_rng(M)
    wg, wu = values(rng, (10, 9)) * np.float32(0.3), values(rng, (10, 9)) * np.float32(0.3)
    inputs = [values(rng, (M, 10)), wg, wu, values(rng, (9,)), values(rng, (9,))]
    g, node = single_node("SwiGLU", inputs, {}, const={1, 2, 3, 4})
    want = reference(g, node, [gemm_input(inputs[0], dtype), rounded(wg, dtype), rounded(wu, dtype)] + inputs[3:])
    assert_close(half_backends[dtype].prepare(node, g)(inputs), want)


def test_float16_weights_out_of_range_is_an_input_error(half_backends):
    rng = np.random.default_rng(5)
    w = values(rng, (4, 4))
    w[1, 2] = 1e5
    g, node = single_node("Linear", [values(rng, (2, 4)), w], {}, const={1})
    with pytest.raises(InputError, match="float16's range"):
        half_backends["float16"].prepare(node, g)
    half_backends["bfloat16"].prepare(node, g)    # bfloat16 has float32's range


def test_16bit_rounding_is_to_nearest_even():
    from eetjit.backends.cpu import half_bits, widen_bits
    torch = pytest.importorskip("torch")
    w = values(np.random.default_rng(6), (4097,)) * np.float32(0.05)
    for dtype, tdt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        assert np.array_equal(widen_bits(half_bits(w, dtype), dtype), torch.from_numpy(w).to(tdt).float().numpy())


def test_avx512_bf16_is_on_only_where_llvm_lists_it_with_a_plus(monkeypatch):
    """LLVM's host feature string names every feature, "-avx512bf16" where the CPU lacks it (an AMD Zen 3 here):
    a substring test took that for the feature, and compiling linear_bf16's intrinsic then aborted the process.
    The host's answer is the one its LLVM string gives, and NUMBA_CPU_FEATURES counts only "+avx512bf16"."""
    import llvmlite.binding as llvm
    from numba.core import config
    from eetjit.backends import cpu
    host = llvm.get_host_cpu_features().flatten().split(",")
    for features, want in (("+avx2,-avx512bf16,+fma", False), ("+avx2,+avx512bf16", True), ("-avx512bf16", False),
                           ("+avx512bf16x", False)):
        assert cpu._feature_on(features, "avx512bf16") is want, features
    cpu.has_avx512_bf16.cache_clear()
    try:
        if (tuple(llvm.llvm_version_info) >= (17,) and not getattr(config, "CPU_FEATURES", None)
                and getattr(config, "CPU_NAME", None) in (None, "", "host")):
            assert cpu.has_avx512_bf16() is ("+avx512bf16" in host)
        monkeypatch.setattr(config, "CPU_NAME", "znver3", raising=False)
        monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,-avx512bf16", raising=False)
        cpu.has_avx512_bf16.cache_clear()
        assert cpu.has_avx512_bf16() is False
    finally:
        monkeypatch.undo()
        cpu.has_avx512_bf16.cache_clear()


@pytest.mark.parametrize("M", (2, 4, 11))
def test_bfloat16_sessions_compute_the_same_with_and_without_avx512_bf16(M):
    """linear_bf16 (vdpbf16ps) and the fallback of CPUs without it (x rounded, then linear_rows/BLAS) multiply
    the same bfloat16 values with float32 sums: equal to float32 rounding."""
    from eetjit.backends.cpu import CpuBackend, has_avx512_bf16
    if not has_avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16: only the fallback runs (test_linear_16bit_weights)")
    rng = np.random.default_rng(M)
    inputs = [values(rng, (M, 70)), values(rng, (70, 50)) * np.float32(0.1), values(rng, (50,))]
    g, node = single_node("Linear", inputs, {"activation": "gelu_erf"}, const={1, 2})
    with_dot, without = CpuBackend(dtype="bfloat16", verbose=False), CpuBackend(dtype="bfloat16", verbose=False)
    without.bf16_dot = False
    assert with_dot.bf16_dot
    assert_close(with_dot.prepare(node, g)(inputs), without.prepare(node, g)(inputs))


@pytest.mark.parametrize("dtype", ("float32",) + HALF)
def test_wrong_input_features_are_an_input_error_and_nans_stay_nan(dtype):
    """x [4, 6] against a [4, 5] weight has as many elements as 6 rows of 4: an InputError, not a reshape that
    runs the kernels past the output (they trust the shapes). And NaN inputs give NaN outputs (bfloat16's own
    rounding keeps a NaN a NaN)."""
    from eetjit.backends.cpu import CpuBackend
    backend = CpuBackend(dtype=dtype, verbose=False)
    rng = np.random.default_rng(7)
    w, x = values(rng, (4, 5)), values(rng, (4, 6))
    g, node = single_node("Linear", [x, w], {}, const={1})
    op = backend.prepare(node, g)
    with pytest.raises(InputError, match="4 input features"):
        op([x, w])
    assert np.isnan(op([np.full((4, 4), np.nan, np.float32), w])[0]).all()
