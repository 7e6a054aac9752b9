"""Embedding and Rotary kernels against eetjit.fused."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eetjit.errors import InputError

from .helpers import SETTINGS, assert_close, reference, single_node, values

seeds = st.integers(0, 2**32 - 1)

# which optional tables a model family uses: (positions, token types, norm, norm beta)
EMBEDDING_KINDS = {"gpt2": (True, False, False, False), "bert": (True, True, True, True),
                   "llama": (False, False, False, False), "norm-no-beta": (False, False, True, False)}


def _embedding_inputs(rng, kind, E, B, S, V=50, P=40):
    positions, token_types, norm, beta = EMBEDDING_KINDS[kind]
    pos = None
    if positions:
        pos = rng.integers(0, P, (B, S)) if rng.random() < 0.5 else np.arange(S)[None]
    return [rng.integers(0, V, (B, S)), pos, values(rng, (V, E)),
            values(rng, (P, E)) if positions else None,
            rng.integers(0, 2, (B, S)) if token_types else None,
            values(rng, (2, E)) if token_types else None,
            values(rng, (E,)) if norm else None, values(rng, (E,)) if beta else None]


# (kind, hidden size) pairs rather than the full product: each pair is one compile
EMBEDDING_CASES = (("gpt2", 33), ("bert", 8), ("bert", 33), ("llama", 8), ("norm-no-beta", 33))


@SETTINGS
@given(case=st.sampled_from(EMBEDDING_CASES), B=st.integers(1, 3), S=st.integers(1, 17), seed=seeds)
def test_embedding(backend, case, B, S, seed):
    kind, E = case
    rng = np.random.default_rng(seed)
    inputs = _embedding_inputs(rng, kind, E, B, S)
    g, node = single_node("Embedding", inputs, {"epsilon": 1e-5}, const={2, 3, 5, 6, 7})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


def test_embedding_rejects_out_of_range_ids(backend):
    rng = np.random.default_rng(0)
    inputs = _embedding_inputs(rng, "gpt2", 33, 1, 4)
    inputs[0][0, 2] = 50
    g, node = single_node("Embedding", inputs, {"epsilon": 1e-5}, const={2, 3})
    with pytest.raises(InputError, match=r"input_ids must lie in \[0, 50\).*\[50\]"):
        backend.prepare(node, g)(inputs)


ROTARY = ((2, 8, 1.0), (3, 16, 1.0), (1, 24, 0.5))   # (heads, head_dim, scaling)


@SETTINGS
@given(cfg=st.sampled_from(ROTARY), B=st.integers(1, 3), S=st.integers(1, 17), one_row=st.booleans(),
       seed=seeds)
def test_rotary(backend, cfg, B, S, one_row, seed):
    H, D, scaling = cfg
    rng = np.random.default_rng(seed)
    inv_freq = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)
    positions = rng.integers(0, 2048, (1 if one_row else B, S))
    inputs = [values(rng, (B, S, H * D)), positions, inv_freq]
    g, node = single_node("Rotary", inputs, {"num_heads": H, "head_dim": D, "scaling": scaling}, const={2})
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))
