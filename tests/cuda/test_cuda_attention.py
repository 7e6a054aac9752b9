"""Attention over the padded batch (ranges, causal, grouped-query) and CachedAttention (prompt chunk and
one-token decode over the [B, Hkv, T, D] cache), with and without the flash-decoding split, on the CUDA backend."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import get_backend
from cuda_helpers import SETTINGS, SIMULATED, assert_close, pick, reference, rounded, run_cuda, single_node, values

from eetjit.fused.op_cached_attention import cached_attention

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
seeds = st.integers(0, 2**32 - 1)
HEAD_DIMS = pick((3, 6, 8), (32, 64, 80, 96, 128, 256))
heads = st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)] if SIMULATED else [(12, 12), (8, 2), (4, 4), (32, 8)])


def _backend(dtype, split, kernel="auto"):
    """split: "auto" (the launch table), "force" (every row shared by several blocks), "never".
    kernel: "auto" (the launch table), "tiled" (the tiled kernel for any number of query rows), "gemm" (the
    batched-GEMM attention for any number of rows, in batch chunks of one sequence), "rows" (neither)."""
    from eetjit.backends.cuda import ATTENTION_GEMM_MAX_BYTES, ATTENTION_GEMM_MIN_ROWS, ATTENTION_TILE_MIN_ROWS
    from eetjit.backends.cuda import ATTENTION_VEC_BLOCKS_PER_SM
    b = get_backend(dtype)
    b.attention_blocks_per_sm, b.attention_min_chunk = {
        "auto": (8 if not SIMULATED else 4, 64 if not SIMULATED else 4),
        "force": (10 ** 6, 2), "never": (1, 10 ** 9)}[split]
    b.attention_vec_tune["blocks_per_sm"] = (b.attention_blocks_per_sm if split != "auto"
                                             else ATTENTION_VEC_BLOCKS_PER_SM[b.mode])
    never = 10 ** 9
    b.attention_tile_min_rows = {"auto": ATTENTION_TILE_MIN_ROWS[b.mode], "tiled": 1}.get(kernel, never)
    b.attention_gemm_min_rows = {"auto": ATTENTION_GEMM_MIN_ROWS[b.mode], "gemm": 1}.get(kernel, never)
    b.attention_gemm_max_bytes = ATTENTION_GEMM_MAX_BYTES
    b.attention_gemm_chunk = 1 if kernel == "gemm" else None     # chunks of one sequence
    return b


def _qkv_views(rng, B, S, H, Hkv, D):
    """q, k, v as column slices of one [B, S, (H + 2 Hkv) D] array, as a fused projection hands them over."""
    X, Y = H * D, Hkv * D
    qkv = values(rng, (B, S, X + 2 * Y))
    return qkv[..., :X], qkv[..., X:X + Y], qkv[..., X + Y:]


@SETTINGS
@given(hh=heads, D=st.sampled_from(HEAD_DIMS), B=st.integers(1, 2), S=st.integers(1, pick(4, 40)),
       causal=st.booleans(), with_ranges=st.booleans(), split=st.sampled_from(["auto", "force", "never"]),
       kernel=st.sampled_from(["auto", "tiled", "gemm", "rows"]), dtype=DTYPES, seed=seeds)
def test_attention(where, hh, D, B, S, causal, with_ranges, split, kernel, dtype, seed):
    H, Hkv = hh
    rng = np.random.default_rng(seed)
    q, k, v = _qkv_views(rng, B, S, H, Hkv, D)
    ranges = None
    if with_ranges:                             # left padding for causal (decoders), right padding otherwise
        n = rng.integers(0, S + 1, B)
        ranges = np.stack([S - n, np.full(B, S)], 1) if causal else np.stack([np.zeros(B, int), n], 1)
        ranges = ranges.astype(np.int64)
    attrs = {"num_heads": H, "kv_num_heads": Hkv, "head_dim": D, "scale": 1 / np.sqrt(D), "causal": int(causal)}
    inputs = [q, k, v] + ([ranges] if with_ranges else [])
    g, node = single_node("Attention", inputs, attrs)
    want = reference(g, node, [rounded(a, dtype) for a in (q, k, v)] + inputs[3:])
    assert_close(run_cuda(_backend(dtype, split, kernel), g, node, inputs), want, dtype)


def _cache(backend, host):
    c = backend.empty(host.shape)
    backend.dev.set(c, host)
    return c


def _check_cached(backend, dtype, hh, D, B, S, t0, T, seed):
    H, Hkv = hh
    rng = np.random.default_rng(seed)
    q, k, v = _qkv_views(rng, B, S, H, Hkv, D)
    kc_host, vc_host = rounded(values(rng, (B, Hkv, T, D)), dtype), rounded(values(rng, (B, Hkv, T, D)), dtype)
    start = rng.integers(0, t0 + 1, B).astype(np.int64)          # pad counts: columns before start are never read
    step = np.array([t0], np.int64)
    kc, vc = _cache(backend, kc_host), _cache(backend, vc_host)
    attrs = {"num_heads": H, "kv_num_heads": Hkv, "head_dim": D, "scale": 1 / np.sqrt(D)}
    inputs = [q, k, v, kc, vc, start, step]
    g, node = single_node("CachedAttention", inputs, attrs)
    got = run_cuda(backend, g, node, inputs)
    want = cached_attention(*(rounded(a, dtype) for a in (q, k, v)), kc_host, vc_host, start, step, H, Hkv, D,
                            1 / np.sqrt(D))
    assert_close(got, [want], dtype)
    assert_close([backend.to_host(kc), backend.to_host(vc)], [kc_host, vc_host], dtype)


@SETTINGS
@given(hh=heads, D=st.sampled_from(HEAD_DIMS), B=st.integers(1, 2), S=st.integers(2, pick(4, 40)),
       split=st.sampled_from(["auto", "force", "never"]), kernel=st.sampled_from(["auto", "tiled", "gemm", "rows"]),
       dtype=DTYPES, seed=seeds)
def test_cached_attention_prompt(where, hh, D, B, S, split, kernel, dtype, seed):
    """The prompt pass: the chunk's K/V go to columns 0..S-1, row i attends start[b]..i."""
    _check_cached(_backend(dtype, split, kernel), dtype, hh, D, B, S, 0, S + pick(2, 30), seed)


@SETTINGS
@given(hh=heads, D=st.sampled_from(HEAD_DIMS), B=st.integers(1, pick(2, 8)),
       T=st.sampled_from(pick((5, 12), (64, 640, 4096, 16384))), frac=st.floats(0, 1),
       split=st.sampled_from(["auto", "force", "never"]), fused_write=st.booleans(), dtype=DTYPES, seed=seeds)
def test_cached_attention_decode(where, hh, D, B, T, frac, split, fused_write, dtype, seed):
    """One-token steps: the launch is sized by the cache capacity T, blocks past the current column idle; the
    new column is written by the attention kernel itself (fused_write) or by kv_cache_write before it."""
    t0 = min(int(frac * T), T - 1)
    backend = _backend(dtype, split, "auto")
    backend.attention_fused_write = fused_write
    try:
        _check_cached(backend, dtype, hh, D, B, 1, t0, T, seed)
    finally:
        backend.attention_fused_write = True


@SETTINGS
@given(hh=heads, D=st.sampled_from(pick((8, 16, 24, 40), (64, 80, 96, 128, 256))), B=st.integers(1, pick(2, 8)),
       T=st.sampled_from(pick((5, 12), (64, 640, 4096))), frac=st.floats(0, 1),
       split=st.sampled_from(["auto", "force", "never"]), vec=st.booleans(), dtype=DTYPES, seed=seeds)
def test_cached_attention_decode_vector_loads(where, hh, D, B, T, frac, split, vec, dtype, seed):
    """Head dims that are whole 16-byte vectors take attention_vec.py.j2 (16-byte loads of the cache; ragged
    rows such as 24 or 80, where the vectors do not fill the lanes, included); EETJIT_ATTENTION_VEC=0 (vec
    False) keeps attention.py.j2. Both give the reference's result."""
    backend = _backend(dtype, split, "auto")
    backend.attention_vec = vec
    per_load = 4 if dtype == "float32" else 8
    backend._kernels.clear()          # the backend's memo of the kernels it asked for (codegen keeps the modules)
    try:
        _check_cached(backend, dtype, hh, D, B, 1, min(int(frac * T), T - 1), T, seed)
        used = {memo[0] for memo in backend._kernels}
        assert ("attention_vec" in used) == (vec and D % per_load == 0), used
    finally:
        backend.attention_vec = True
        backend._kernels.clear()


def test_decode_reads_the_step_from_the_device(where):
    """A captured step replays one launch: the column comes from device memory, so bumping it there moves it."""
    backend = _backend("float32", "force")
    rng = np.random.default_rng(7)
    H, D, T, B = 2, 4, 9, 2
    kc_host, vc_host = values(rng, (B, H, T, D)), values(rng, (B, H, T, D))
    kc, vc = _cache(backend, kc_host), _cache(backend, vc_host)
    start = backend.dev.upload(np.array([0, 2], np.int64))
    step = backend.dev.upload(np.array([3], np.int64))
    attrs = {"num_heads": H, "kv_num_heads": H, "head_dim": D, "scale": 0.5}
    q, k, v = values(rng, (B, 1, H * D)), values(rng, (B, 1, H * D)), values(rng, (B, 1, H * D))
    g, node = single_node("CachedAttention", [q, k, v, kc, vc, start, step], attrs)
    op = backend.prepare(node, g)
    for t in (3, 4, 5):
        backend.dev.set(step, [t])
        got = backend.to_host(op([q, k, v, kc, vc, start, step])[0])
        want = cached_attention(q, k, v, kc_host, vc_host, np.array([0, 2]), np.array([t]), H, H, D, 0.5)
        assert_close([got], [want])


@SETTINGS
@given(hh=heads, D=st.sampled_from(HEAD_DIMS), B=st.integers(1, 3), S=st.integers(pick(5, 17), pick(10, 300)),
       layout=st.sampled_from(["bshd", "cache"]), causal=st.booleans(), kernel=st.sampled_from(["tiled", "gemm"]),
       dtype=DTYPES, seed=seeds)
def test_prompt_attention_many_rows(where, hh, D, B, S, layout, causal, kernel, dtype, seed):
    """The kernels of prompts and encoder batches: the tiled one (several query tiles per (b, h), several key tiles
    per row, rows of one tile ending at different causal columns) and the batched-GEMM one (here in batch chunks
    of one sequence); left-padded rows, and rows with no column at all."""
    backend = _backend(dtype, "auto", kernel)
    H, Hkv = hh
    rng = np.random.default_rng(seed)
    if layout == "cache":
        _check_cached(backend, dtype, hh, D, B, S, 0, S + 3, seed)
        return
    q, k, v = _qkv_views(rng, B, S, H, Hkv, D)
    n = rng.integers(0, S + 1, B)
    n[0] = S                                    # one sequence without padding, the others anything (0: empty)
    ranges = (np.stack([S - n, np.full(B, S)], 1) if causal else np.stack([np.zeros(B, int), n], 1)).astype(np.int64)
    attrs = {"num_heads": H, "kv_num_heads": Hkv, "head_dim": D, "scale": 1 / np.sqrt(D), "causal": int(causal)}
    g, node = single_node("Attention", [q, k, v, ranges], attrs)
    want = reference(g, node, [rounded(a, dtype) for a in (q, k, v)] + [ranges])
    assert_close(run_cuda(backend, g, node, [q, k, v, ranges]), want, dtype)
