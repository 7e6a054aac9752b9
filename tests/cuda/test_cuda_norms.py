"""LayerNorm, AddLayerNorm, RMSNorm, AddRMSNorm CUDA kernels against the references of eetjit.fused."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import get_backend
from cuda_helpers import SETTINGS, assert_close, pick, reference, rounded, run_cuda, single_node, values

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
# GPU: around warp/block boundaries and the big hidden sizes (one block per row loops over E).
HIDDEN = pick((5, 13, 33), (1, 7, 31, 768, 1000, 4097, 16384))
leads = st.lists(st.integers(1, pick(2, 5)), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)
b_forms = st.sampled_from(["same", "row", "batch-broadcast"])


@SETTINGS
@given(E=st.sampled_from(HIDDEN), lead=leads, has_beta=st.booleans(), dtype=DTYPES, seed=seeds)
def test_layer_norm(where, E, lead, has_beta, dtype, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, lead + (E,)), values(rng, (E,)), values(rng, (E,)) if has_beta else None]
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1e-5}, const={1, 2})
    want = reference(g, node, [rounded(inputs[0], dtype)] + inputs[1:])
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), want, dtype)


def _add_inputs(rng, E, lead, form):
    a = values(rng, (2,) + lead + (E,))
    b = {"same": lambda: values(rng, a.shape), "row": lambda: values(rng, (E,)),
         "batch-broadcast": lambda: values(rng, (1,) + a.shape[1:])}[form]()
    return a, b


@SETTINGS
@given(E=st.sampled_from(HIDDEN), lead=leads, form=b_forms, has_beta=st.booleans(), dtype=DTYPES, seed=seeds)
def test_add_layer_norm(where, E, lead, form, has_beta, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = _add_inputs(rng, E, lead, form)
    inputs = [a, b, values(rng, (E,)), values(rng, (E,)) if has_beta else None]
    g, node = single_node("AddLayerNorm", inputs, {"epsilon": 1e-5}, const={2, 3}, outputs=2)
    s = rounded(rounded(a, dtype) + rounded(b, dtype), dtype)      # the stored residual the norm reads
    want = [reference(g, node, [s, np.zeros_like(s)] + inputs[2:])[0], s]
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), want, dtype)


@SETTINGS
@given(E=st.sampled_from(HIDDEN), lead=leads, dtype=DTYPES, seed=seeds)
def test_rms_norm(where, E, lead, dtype, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, lead + (E,)), values(rng, (E,))]
    g, node = single_node("RMSNorm", inputs, {"epsilon": 1e-6}, const={1})
    want = reference(g, node, [rounded(inputs[0], dtype), inputs[1]])
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), want, dtype)


@SETTINGS
@given(E=st.sampled_from(HIDDEN), lead=leads, form=b_forms, dtype=DTYPES, seed=seeds)
def test_add_rms_norm(where, E, lead, form, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = _add_inputs(rng, E, lead, form)
    inputs = [a, b, values(rng, (E,))]
    g, node = single_node("AddRMSNorm", inputs, {"epsilon": 1e-6}, const={2}, outputs=2)
    s = rounded(rounded(a, dtype) + rounded(b, dtype), dtype)
    want = [reference(g, node, [s, np.zeros_like(s), inputs[2]])[0], s]
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), want, dtype)


def test_norm_writes_into_given_buffers(where):
    backend = get_backend()
    rng = np.random.default_rng(0)
    inputs = [values(rng, (2, 3, 16)), values(rng, (2, 3, 16)), values(rng, (16,)), values(rng, (16,))]
    g, node = single_node("AddLayerNorm", inputs, {"epsilon": 1e-5}, const={2, 3}, outputs=2)
    out = [backend.empty((2, 3, 16)), backend.empty((2, 3, 16))]
    got = backend.prepare(node, g)(inputs, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert_close([backend.to_host(x) for x in got], reference(g, node, inputs))
