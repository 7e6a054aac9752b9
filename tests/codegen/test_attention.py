"""Prompt attention, and the KV-cache prefill/decode steps, against their NumPy references."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from eetjit.backends import reference_cached
from eetjit.fused.op_attention import attention

from .helpers import SETTINGS, assert_close, reference, single_node, values

seeds = st.integers(0, 2**32 - 1)

# ((heads, kv heads, head dim), causal): MHA, GQA 2:1 and 3:1 (MQA), head dims 8/16/24
ATTENTION = (((2, 2, 8), True), ((4, 2, 16), True), ((3, 1, 24), False), ((4, 2, 16), False))
HEADS = ((2, 2, 8), (4, 2, 16), (3, 1, 24))
# lengths around the bucket edges (16 | 32); T = S + extra stays in those two buckets
LENGTHS = (1, 2, 5, 15, 16, 17, 24, 29)


def _ranges(rng, kind, B, T):
    """[B, 2] valid key columns: left padding (decoders), right padding (encoders), any, or None."""
    if kind == "none":
        return None
    n = rng.integers(0, T + 1, B)               # may be T: a sequence with no valid column
    if kind == "left":
        return np.stack([n, np.full(B, T)], 1).astype(np.int64)
    if kind == "right":
        return np.stack([np.zeros(B, np.int64), n], 1).astype(np.int64)
    return np.sort(rng.integers(0, T + 1, (B, 2)), axis=1).astype(np.int64)


@SETTINGS
@given(cfg=st.sampled_from(ATTENTION), B=st.integers(1, 3), S=st.sampled_from(LENGTHS), extra=st.integers(0, 3),
       kind=st.sampled_from(("none", "left", "right", "any")), seed=seeds)
def test_attention(backend, cfg, B, S, extra, kind, seed):
    (H, Hkv, D), causal = cfg
    T = S + extra                                    # T > S: query i sits at column T - S + i
    rng = np.random.default_rng(seed)
    inputs = [values(rng, (B, S, H * D)), values(rng, (B, T, Hkv * D)), values(rng, (B, T, Hkv * D))]
    ranges = _ranges(rng, kind, B, T)
    if ranges is not None:
        inputs.append(ranges)
    attrs = {"num_heads": H, "kv_num_heads": Hkv, "head_dim": D, "scale": 1 / np.sqrt(D), "causal": int(causal)}
    g, node = single_node("Attention", inputs, attrs)
    assert_close(backend.prepare(node, g)(inputs), reference(g, node, inputs))


T_MAX = 24


@SETTINGS
@given(heads=st.sampled_from(HEADS), B=st.integers(1, 3), t=st.integers(0, T_MAX - 1), seed=seeds)
def test_attention_decode(backend, heads, B, t, seed):
    H, Hkv, D = heads
    rng = np.random.default_rng(seed)
    q, k_new, v_new = values(rng, (B, 1, H * D)), values(rng, (B, 1, Hkv * D)), values(rng, (B, 1, Hkv * D))
    k_cache, v_cache = values(rng, (B, Hkv, T_MAX, D)), values(rng, (B, Hkv, T_MAX, D))
    start = rng.integers(0, t + 2, B)                # t + 1: nothing to attend, zeros
    want_k, want_v = k_cache.copy(), v_cache.copy()
    want = reference_cached.attention_decode(q, k_new, v_new, want_k, want_v, start, t, H, Hkv, D, 1 / np.sqrt(D))
    got = backend.attention_decode(q, k_new, v_new, k_cache, v_cache, start, t, num_heads=H, kv_num_heads=Hkv,
                                   head_dim=D, scale=1 / np.sqrt(D))
    assert_close([got], [want])
    np.testing.assert_array_equal(k_cache, want_k)
    np.testing.assert_array_equal(v_cache, want_v)


@SETTINGS
@given(heads=st.sampled_from(HEADS[1:]), B=st.integers(1, 3), S=st.sampled_from((1, 5, 15, 16, 17, 24)), seed=seeds)
def test_attention_prefill_cached(backend, heads, B, S, seed):
    H, Hkv, D = heads
    rng = np.random.default_rng(seed)
    q, k, v = values(rng, (B, S, H * D)), values(rng, (B, S, Hkv * D)), values(rng, (B, S, Hkv * D))
    k_cache, v_cache = values(rng, (B, Hkv, T_MAX, D)), values(rng, (B, Hkv, T_MAX, D))
    ranges = _ranges(rng, "left", B, S)
    want_k, want_v = k_cache.copy(), v_cache.copy()
    want = reference_cached.attention_prefill_cached(q, k, v, want_k, want_v, ranges, H, Hkv, D, 1 / np.sqrt(D))
    got = backend.attention_prefill_cached(q, k, v, k_cache, v_cache, ranges, num_heads=H, kv_num_heads=Hkv,
                                           head_dim=D, scale=1 / np.sqrt(D))
    assert_close([got], [want])
    np.testing.assert_array_equal(k_cache, want_k)
    np.testing.assert_array_equal(v_cache, want_v)


def test_prefill_then_decode_is_attention_over_the_whole_sequence(backend):
    """Generation's two kernels compose into plain causal attention over prompt + new tokens (left padded)."""
    H, Hkv, D, B, S, steps = 4, 2, 16, 3, 5, 4
    rng = np.random.default_rng(7)
    T = S + steps
    q, k, v = values(rng, (B, T, H * D)), values(rng, (B, T, Hkv * D)), values(rng, (B, T, Hkv * D))
    pad = np.array([0, 2, 4])
    k_cache, v_cache = backend.new_kv_cache(B, Hkv, T_MAX, D)
    kw = dict(num_heads=H, kv_num_heads=Hkv, head_dim=D, scale=1 / np.sqrt(D))
    ranges = np.stack([pad, np.full(B, S)], 1)
    ys = [backend.attention_prefill_cached(q[:, :S], k[:, :S], v[:, :S], k_cache, v_cache, ranges, **kw)]
    for t in range(S, T):
        ys.append(backend.attention_decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], k_cache, v_cache, pad, t,
                                           **kw))
    want = attention(q, k, v, np.stack([pad, np.full(B, T)], 1), H, Hkv, D, kw["scale"], causal=1)
    assert_close([np.concatenate(ys, axis=1)], [want])
