"""Sampling on the device (temperature, top-k, top-p): the pick for a given uniform number equals the NumPy
reference's (eetjit.backends.cuda_sampling.reference_sample), which is `select`'s semantics; generation with
do_sample runs it without copying logits to the host."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuda_helpers import SETTINGS, SIMULATED, get_backend, pick

from eetjit.backends.cuda_sampling import reference_sample, sample_tokens
from eetjit.runtime.sampling import select

# A pick is compared only where it cannot be moved by float32 rounding: the reference gives the same token for u
# and top_p moved by this much either way (the device sums the softmax in float32, the reference in float64).
ROUNDING = 1e-5


def _logits(rng, B, V, spread):
    """Random non-zero logits, distinct before rounding to the storage dtype: each row a shuffled grid over
    [-spread, spread] (a half step off zero) plus jitter smaller than the step."""
    step = 2.0 * spread / V
    grid = (np.argsort(rng.random((B, V)), -1) - V / 2 + 0.5) * step
    return (grid + rng.uniform(-0.3, 0.3, (B, V)) * step).astype(np.float32)


def _robust(x, u, temperature, top_k, top_p):
    """Per row: whether the reference's pick survives moving u and top_p by ROUNDING."""
    want = reference_sample(x, u, temperature, top_k, top_p)
    same = np.ones(len(u), bool)
    for du in (-ROUNDING, ROUNDING):
        for dp in ((-ROUNDING, ROUNDING) if top_p < 1.0 else (0.0,)):
            same &= reference_sample(x, np.clip(u + du, 0.0, 1.0), temperature, top_k,
                                     min(1.0, top_p + dp)) == want
    return want, same


def _run(backend, x, u, temperature, top_k, top_p, advance=False):
    B = x.shape[0]
    tokens = backend.dev.upload(np.full((B,), -1, np.int64))
    extra = {}
    if advance:
        extra = dict(ids_B1=backend.dev.upload(np.full((B, 1), -1, np.int64)),
                     positions_B1=backend.dev.upload(np.arange(B, dtype=np.int64)[:, None]),
                     step_1=backend.dev.upload(np.array([7], np.int64)))
    sample_tokens(backend, x, tokens, backend.dev.upload(u.astype(np.float32)), temperature, top_k, top_p, **extra)
    return backend.to_host(tokens), {k: backend.to_host(v) for k, v in extra.items()}


@SETTINGS
@given(B=st.integers(1, pick(3, 16)), V=st.sampled_from(pick((7, 40, 150), (97, 1000, 32000, 50257))),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]), temperature=st.floats(0.25, 2.0),
       top_k=st.one_of(st.just(0), st.integers(1, 60), st.integers(1, 60000)),
       top_p=st.one_of(st.just(1.0), st.floats(0.02, 1.0)), spread=st.sampled_from([1.0, 4.0, 12.0]),
       seed=st.integers(0, 2**32 - 1))
def test_sample_tokens_match_the_reference(where, B, V, dtype, temperature, top_k, top_p, spread, seed):
    backend = get_backend(dtype)
    rng = np.random.default_rng(seed)
    logits = backend.dev.upload(_logits(rng, B, V, spread)[:, None, :],
                                backend.dtype)                                  # [B, 1, V] in the storage dtype
    x = backend.to_host(logits).reshape(B, V)                                  # what the kernel sees, as float32
    u = rng.random(B).astype(np.float32)
    want, robust = _robust(x, u, temperature, top_k, top_p)
    got, _ = _run(backend, logits, u, temperature, top_k, top_p)
    np.testing.assert_array_equal(got[robust], want[robust])
    assert ((got >= 0) & (got < V)).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_1_and_tiny_top_p_are_argmax(where, dtype):
    backend = get_backend(dtype)
    rng = np.random.default_rng(5)
    B, V = pick((3, 37), (8, 50257))
    x = _logits(rng, B, V, 3.0)
    x[np.arange(B), x.argmax(-1)] += 1.0          # a unique maximum in every dtype (top-k keeps ties)
    logits = backend.dev.upload(x, backend.dtype)
    want = backend.to_host(logits).argmax(-1)
    # top_p below 1 / V: the second token always has the first one's mass (>= 1 / V of it) above it
    for temperature, top_k, top_p in ((1.0, 1, 1.0), (0.3, 1, 0.9), (1.7, 0, 1e-6), (1.0, 5, 1e-3)):
        u = rng.random(B)
        got, adv = _run(backend, logits, u, temperature, top_k, top_p, advance=True)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(adv["ids_B1"][:, 0], want)               # the next step's inputs
        np.testing.assert_array_equal(adv["positions_B1"][:, 0], np.arange(B) + 1)
        assert adv["step_1"][0] == 8


def test_ids_without_advance_and_extremes(where):
    """ids only (the generator: its step already advanced positions); u = 0 and u -> 1; top_k >= V is off."""
    backend = get_backend()
    x = np.array([[0.5, 2.0, -1.0, 1.5], [3.0, 1.0, 2.9, -2.0]], np.float32)
    logits = backend.dev.upload(x)
    tokens = backend.zeros((2,), np.int64)
    ids = backend.dev.upload(np.full((2, 1), -1, np.int64))
    for u, k in (([0.0, 0.0], 0), ([0.99999994, 0.99999994], 0), ([0.0, 0.0], 9), ([0.5, 0.5], 2)):
        u = np.array(u, np.float32)
        sample_tokens(backend, logits, tokens, backend.dev.upload(u), 1.0, k, 1.0, ids_B1=ids)
        want = reference_sample(x, u, 1.0, k, 1.0)
        np.testing.assert_array_equal(backend.to_host(tokens), want)
        np.testing.assert_array_equal(backend.to_host(ids)[:, 0], want)
    assert list(reference_sample(x, [0.0, 0.0], 1.0, 0, 1.0)) == [0, 0]
    assert list(reference_sample(x, [0.99999994, 0.99999994], 1.0, 0, 1.0)) == [3, 3]


# --- the reference is select's semantics (NumPy only: many examples) --------------------------------------------
@settings(SETTINGS, max_examples=60)
@given(B=st.integers(1, 4), V=st.integers(1, 300), temperature=st.floats(0.25, 2.0),
       top_k=st.one_of(st.just(0), st.integers(1, 320)), top_p=st.one_of(st.just(1.0), st.floats(0.02, 1.0)),
       seed=st.integers(0, 2**32 - 1))
def test_reference_is_select(B, V, temperature, top_k, top_p, seed):
    """With distinct logits (no ties: select breaks them by index at the top-p boundary, the device keeps or
    drops equal logits together) and u > 0, reference_sample picks what select does with the same draws."""
    x = _logits(np.random.default_rng(seed), B, V, 4.0)
    want = select(x, True, temperature, top_k, top_p, np.random.default_rng(seed + 1))
    u = np.random.default_rng(seed + 1).random((B, 1))[:, 0]
    np.testing.assert_array_equal(reference_sample(x, u, temperature, top_k, top_p), want)


# --- generation ------------------------------------------------------------------------------------------------
def test_sim_generate_samples_on_the_device_like_the_cpu_session(monkeypatch):
    """Same seed, same settings: the CUDA session samples on the device the tokens that the CPU session samples
    on the host (the same uniform draws), and never copies logits to the host."""
    if not SIMULATED:
        pytest.skip("simulator run")
    import eetjit
    from eetjit.resources import graphs_dir

    def session(device):
        return eetjit.compile(str(graphs_dir() / "gpt2-ts17-eager.onnx"), device=device, verbose=False,
                              max_batch=2, max_seq_len=32)

    prompts = [[5, 17, 33, 2, 9], [40, 41]]
    kw = dict(max_new_tokens=2, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    want = session("cpu").generate(prompts, **kw)
    sess = session("cuda")
    copied = []
    to_host, to_host_async = sess.backend.to_host, sess.backend.dev.to_host_async
    monkeypatch.setattr(sess.backend, "to_host", lambda x: copied.append(np.shape(x)) or to_host(x))
    monkeypatch.setattr(sess.backend.dev, "to_host_async", lambda x: copied.append(np.shape(x)) or to_host_async(x))
    assert sess.generate(prompts, **kw) == want
    assert copied and all(int(np.prod(s)) <= len(prompts) for s in copied), copied    # B tokens, never logits
