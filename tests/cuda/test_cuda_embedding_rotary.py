"""Embedding (token + position + token-type tables, optional LayerNorm), Rotary and LastToken on the CUDA backend."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import get_backend
from cuda_helpers import SETTINGS, assert_close, pick, reference, rounded, run_cuda, single_node, values

from eetjit.errors import InputError

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
seeds = st.integers(0, 2**32 - 1)


@SETTINGS
@given(E=st.sampled_from(pick((4, 9), (64, 768, 1001))), B=st.integers(1, pick(2, 4)), S=st.integers(1, pick(3, 30)),
       positions=st.sampled_from(["none", "batch", "one-row"]), token_types=st.booleans(), norm=st.booleans(),
       dtype=DTYPES, seed=seeds)
def test_embedding(where, E, B, S, positions, token_types, norm, dtype, seed):
    rng = np.random.default_rng(seed)
    V, P = 11, 40
    ids = rng.integers(0, V, (B, S)).astype(np.int64)
    pos = None
    if positions == "batch":
        pos = rng.integers(0, P, (B, S)).astype(np.int64)
    elif positions == "one-row":
        pos = np.arange(S, dtype=np.int64)[None]
    wte, wpe = values(rng, (V, E)), values(rng, (P, E)) if positions != "none" else None
    tt, wtt = (rng.integers(0, 2, (B, S)).astype(np.int64), values(rng, (2, E))) if token_types else (None, None)
    gamma, beta = (values(rng, (E,)), values(rng, (E,))) if norm else (None, None)
    inputs = [ids, pos, wte, wpe, tt, wtt, gamma, beta]
    g, node = single_node("Embedding", inputs, {"epsilon": 1e-5}, const={2, 3, 5, 6, 7})
    if positions != "none" and pos is None:
        return
    r = [ids, pos, rounded(wte, dtype), None if wpe is None else rounded(wpe, dtype), tt,
         None if wtt is None else rounded(wtt, dtype), gamma, beta]
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), reference(g, node, r), dtype,
                 2.0 if dtype != "float32" else 1.0)


def test_embedding_rejects_ids_out_of_the_vocabulary(where):
    rng = np.random.default_rng(0)
    inputs = [np.array([[1, 11]], np.int64), None, values(rng, (11, 4))]
    g, node = single_node("Embedding", inputs, {}, const={2})
    with pytest.raises(InputError, match="input_ids"):
        get_backend().prepare(node, g)(inputs)


@SETTINGS
@given(H=st.integers(1, 3), D=st.sampled_from(pick((2, 6), (32, 64, 80, 96, 128, 256))), B=st.integers(1, pick(2, 3)),
       S=st.integers(1, pick(3, 17)), one_row=st.booleans(), scaling=st.sampled_from([1.0, 0.7]), dtype=DTYPES,
       seed=seeds)
def test_rotary(where, H, D, B, S, one_row, scaling, dtype, seed):
    rng = np.random.default_rng(seed)
    x = values(rng, (B, S, H * D))
    pos = (np.arange(S)[None] if one_row else rng.integers(0, 16384, (B, S))).astype(np.int64)
    inv_freq = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)
    inputs = [x, pos, inv_freq]
    g, node = single_node("Rotary", inputs, {"num_heads": H, "head_dim": D, "scaling": scaling}, const={2})
    # large positions: angle = pos * inv_freq is rounded to float32 in both; cos/sin of it agree to ~1e-6 * pos
    scale = 1.0 if dtype != "float32" else (1.0 if one_row else 50.0)
    assert_close(run_cuda(get_backend(dtype), g, node, inputs),
                 reference(g, node, [rounded(x, dtype), pos, inv_freq]), dtype, scale)


@SETTINGS
@given(B=st.integers(1, pick(2, 8)), S=st.integers(1, pick(3, 64)), E=st.sampled_from(pick((3, 8), (64, 768))),
       seed=seeds)
def test_last_token(where, B, S, E, seed):
    rng = np.random.default_rng(seed)
    inputs = [values(rng, (B, S, E))]
    g, node = single_node("LastToken", inputs)
    assert_close(run_cuda(get_backend(), g, node, inputs), reference(g, node, inputs))
