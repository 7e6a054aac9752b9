"""LayerNorm, AddLayerNorm, RMSNorm, AddRMSNorm kernels against the references of eetjit.fused."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .helpers import SETTINGS, assert_close, reference, single_node, values

# Hidden sizes around the boundaries a vectorizer cares about (1, a few, 32 +- 1, not a power of two).
LAYER_NORM_E = (1, 7, 32, 33, 100)
ADD_NORM_E = (1, 31, 64)
RMS_E = (8, 33, 96)
ADD_RMS_E = (5, 32, 100)
leads = st.lists(st.integers(1, 6), min_size=0, max_size=2).map(tuple)   # the [...] before E
seeds = st.integers(0, 2**32 - 1)


@SETTINGS
@given(E=st.sampled_from(LAYER_NORM_E), lead=leads, has_beta=st.booleans(), seed=seeds)
def test_layer_norm(backend, E, lead, has_beta, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, lead + (E,)), values(rng, (E,)), values(rng, (E,)) if has_beta else None]
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1e-5}, const={1, 2})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


# b: the residual (same shape), a bias row [E], or a [1, S, E] broadcast over the batch
b_forms = st.sampled_from(["same", "row", "batch-broadcast"])


def _add_inputs(rng, E, lead, form):
    a = values(rng, (2,) + lead + (E,))
    b = {"same": lambda: values(rng, a.shape), "row": lambda: values(rng, (E,)),
         "batch-broadcast": lambda: values(rng, (1,) + a.shape[1:])}[form]()
    return a, b


@SETTINGS
@given(E=st.sampled_from(ADD_NORM_E), lead=leads, form=b_forms, has_beta=st.booleans(), seed=seeds)
def test_add_layer_norm(backend, E, lead, form, has_beta, seed):
    rng = np.random.default_rng(seed)
    a, b = _add_inputs(rng, E, lead, form)
    inputs = [a, b, values(rng, (E,)), values(rng, (E,)) if has_beta else None]
    g, node = single_node("AddLayerNorm", inputs, {"epsilon": 1e-5}, const={2, 3}, outputs=2)
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


@SETTINGS
@given(E=st.sampled_from(RMS_E), lead=leads, seed=seeds)
def test_rms_norm(backend, E, lead, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, lead + (E,)), values(rng, (E,))]
    g, node = single_node("RMSNorm", inputs, {"epsilon": 1e-6}, const={1})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


@SETTINGS
@given(E=st.sampled_from(ADD_RMS_E), lead=leads, form=b_forms, seed=seeds)
def test_add_rms_norm(backend, E, lead, form, seed):
    rng = np.random.default_rng(seed)
    a, b = _add_inputs(rng, E, lead, form)
    inputs = [a, b, values(rng, (E,))]
    g, node = single_node("AddRMSNorm", inputs, {"epsilon": 1e-6}, const={2}, outputs=2)
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


def test_norm_writes_into_given_buffers(backend):
    rng = np.random.default_rng(0)
    inputs = [values(rng, (3, 4, 32)), values(rng, (3, 4, 32)), values(rng, (32,)), values(rng, (32,))]
    g, node = single_node("AddLayerNorm", inputs, {"epsilon": 1e-5}, const={2, 3}, outputs=2)
    out = [np.empty((3, 4, 32), np.float32), np.empty((3, 4, 32), np.float32)]
    got = backend.prepare(node, g)(inputs, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert_close(got, reference(g, node, inputs))


def test_gamma_from_a_runtime_input(backend):
    """Weights that are not constants are converted per call (and E comes from the input)."""
    rng = np.random.default_rng(1)
    inputs = [values(rng, (5, 33)), values(rng, (33,)), values(rng, (33,))]
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1e-5})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))
