"""Linear (BLAS GEMM + templated bias/activation epilogue, split) and SwiGLU against eetjit.fused."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
