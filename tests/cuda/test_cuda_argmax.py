"""Greedy decoding on the device: argmax over the logits, and the next step's inputs advanced in place."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import get_backend
from cuda_helpers import SETTINGS, pick, values


@SETTINGS
@given(B=st.integers(1, pick(3, 32)), V=st.sampled_from(pick((5, 19), (97, 50257, 32000))),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]), ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_greedy_tokens(where, B, V, dtype, ties, seed):
    """Several blocks scan a row (ARGMAX_SPLITS), the last one reducing their partials: ties across blocks (V // 2
    and V - 1 lie in different ones) and a second step (the per-row counts reset by the first) included."""
    backend = get_backend(dtype)
    rng = np.random.default_rng(seed)
    tokens = backend.zeros((B,), np.int64)
    ids = backend.dev.upload(np.full((B, 1), -1, np.int64))
    positions = backend.dev.upload(np.arange(B, dtype=np.int64)[:, None])
    step = backend.dev.upload(np.array([7], np.int64))
    for n in (1, 2):
        logits = values(rng, (B, 1, V))
        if ties:                                   # the first of equal maxima wins, as numpy's argmax
            logits[:, :, V // 2] = logits[:, :, -1] = 3.0
        dev_logits = backend.dev.upload(logits, backend.dtype)
        want = backend.to_host(dev_logits).reshape(B, V).argmax(-1)
        backend.greedy_tokens(dev_logits, tokens, ids, positions, step)
        np.testing.assert_array_equal(backend.to_host(tokens), want)
        np.testing.assert_array_equal(backend.to_host(ids)[:, 0], want)
        np.testing.assert_array_equal(backend.to_host(positions)[:, 0], np.arange(B) + n)
        assert backend.to_host(step)[0] == 7 + n


def test_greedy_tokens_without_advance(where):
    backend = get_backend()
    logits = backend.dev.upload(np.array([[0.5, 2.0, -1.0], [3.0, 1.0, 3.0]], np.float32))
    tokens = backend.zeros((2,), np.int64)
    backend.greedy_tokens(logits, tokens)
    np.testing.assert_array_equal(backend.to_host(tokens), [1, 0])
