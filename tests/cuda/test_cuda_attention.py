"""Attention over the padded batch (ranges, causal, grouped-query) and CachedAttention (prompt chunk and
one-token decode over the [B, Hkv, T, D] cache), with and without the flash-decoding split, on the CUDA backend."""
import numpy as np
import pytest
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
    """split: "auto" (the launch table), "force" (every row shared by several blocks, short rows included),
    "never".
    kernel: "auto" (the launch table), "tiled" (the tiled kernel for any number of query rows), "gemm" (the
    batched-GEMM attention for any number of rows, in batch chunks of one sequence), "mma" (the tensor-core flash
    attention for any number of rows, where it can run), "rows" (none of them)."""
    from eetjit.backends.cuda import ATTENTION_GEMM_MAX_BYTES, ATTENTION_GEMM_MIN_ROWS, ATTENTION_TILE_MIN_ROWS
    from eetjit.backends.cuda import ATTENTION_MMA_MIN_ROWS
    from eetjit.backends.cuda import ATTENTION_SINGLE_COLS, ATTENTION_VEC_BLOCKS_PER_SM
    b = get_backend(dtype)
    b.attention_blocks_per_sm, b.attention_min_chunk = {
        "auto": (8 if not SIMULATED else 4, 64 if not SIMULATED else 4),
        "force": (10 ** 6, 2), "never": (1, 10 ** 9)}[split]
    b.attention_vec_tune["blocks_per_sm"] = (b.attention_blocks_per_sm if split != "auto"
                                             else ATTENTION_VEC_BLOCKS_PER_SM[b.mode])
    b.attention_single_cols = 0 if split == "force" else ATTENTION_SINGLE_COLS[b.mode]
    never = 10 ** 9
    b.attention_tile_min_rows = {"auto": ATTENTION_TILE_MIN_ROWS[b.mode], "tiled": 1}.get(kernel, never)
    b.attention_gemm_min_rows = {"auto": ATTENTION_GEMM_MIN_ROWS[b.mode], "gemm": 1}.get(kernel, never)
    b.attention_mma_min_rows = {"auto": ATTENTION_MMA_MIN_ROWS[b.mode], "mma": 1}.get(kernel, never)
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


def _check_cached(backend, dtype, hh, D, B, S, t0, T, seed, max_start=None):
    H, Hkv = hh
    rng = np.random.default_rng(seed)
    q, k, v = _qkv_views(rng, B, S, H, Hkv, D)
    kc_host, vc_host = rounded(values(rng, (B, Hkv, T, D)), dtype), rounded(values(rng, (B, Hkv, T, D)), dtype)
    # pad counts: columns before start are never read
    start = rng.integers(0, (t0 if max_start is None else max_start) + 1, B).astype(np.int64)
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


@pytest.mark.parametrize("splits,live", [(3, 6), (5, 10), (9, 18), (8, 16), (5, 8)])
@pytest.mark.parametrize("vec", [True, False])
def test_decode_merges_many_splits(where, splits, live, vec):
    """A row's last block merges its splits' partials 4 splits at a time (all of a group's loads issued before
    any is used): rows of 3 splits (one group, a slot past the last), 5 and 9 (a last group of 1), 8 (two whole
    groups), each split 2 of the live columns (start 0, 2 cache columns a split), and 5 splits over 8 columns (the
    last split empty: its max -1e30, its sum 0); with and without 16-byte loads."""
    dtype, D = "float16", 8
    backend = _backend(dtype, "force")
    saved = backend.attention_vec
    backend.attention_vec = vec
    try:
        _check_cached(backend, dtype, (2, 1), D, 2, 1, live - 1, 2 * splits, splits, max_start=0)
    finally:
        backend.attention_vec = saved


@pytest.mark.parametrize("splits,live", pick([(2, None), (3, 2)], [(2, None), (3, None), (8, None), (3, 2)]))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("cluster", pick([True], [True, False]))     # the simulator has one path
def test_decode_splits_merge_in_one_cluster(where, splits, live, dtype, cluster):
    """The fixed scheme's splits of a row (at most 8, the portable cluster size) launch as one thread-block cluster
    where the device can (sm_90 on; EETJIT_ATTENTION_CLUSTER=0, here cluster False, turns it off): each block
    stores its merge into block 0's shared memory, which merges them after a cluster barrier. The simulator cannot
    run clusters and keeps the global-memory merge. The decode launch asks for a cluster exactly where the device
    launches them and the knob is on, and gives the reference's result over the whole cache (the step's own column
    in the last split) and over fewer live columns than splits (an empty split)."""
    D = pick(8, 64)
    T = splits * pick(4, 80)
    backend = _backend(dtype, "never")
    saved = (dict(backend.attention_vec_tune), backend.attention_min_chunk, backend.attention_dynamic_splits,
             backend.attention_cluster)
    backend.attention_vec_tune["blocks_per_sm"] = 10 ** 6
    backend.attention_min_chunk, backend.attention_dynamic_splits = T // splits, 10 ** 6
    backend.attention_cluster = cluster and backend.dev.clusters
    launches = []
    launch = backend.dev.launch

    def record(kern, grid, block, *args, cluster=0):
        launches.append((grid, cluster))
        return launch(kern, grid, block, *args, cluster=cluster)
    backend.dev.launch = record
    try:
        used = _attention_kernels_used(backend, lambda: _check_cached(
            backend, dtype, (2, 1), D, 2, 1, T - 1 if live is None else live - 1, T, seed=7, max_start=0))
        assert "attention_vec" in used, used
    finally:
        del backend.dev.launch
        backend.attention_vec_tune.update(saved[0])
        backend.attention_min_chunk, backend.attention_dynamic_splits, backend.attention_cluster = saved[1:]
    split_launches = [c for g, c in launches if isinstance(g, tuple) and g[0] == splits]
    assert split_launches, launches
    want = splits if cluster and backend.dev.clusters else 0
    assert split_launches == [want] * len(split_launches), (launches, backend.dev.clusters)
    if SIMULATED:
        assert not backend.dev.clusters


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
       split=st.sampled_from(["auto", "force", "never"]), vec=st.booleans(), pipeline=st.booleans(), dtype=DTYPES,
       seed=seeds)
def test_cached_attention_decode_vector_loads(where, hh, D, B, T, frac, split, vec, pipeline, dtype, seed):
    """Head dims that are whole 16-byte vectors take attention_vec.py.j2 (16-byte loads of the cache; ragged
    rows such as 24 or 80, where the vectors do not fill the lanes, included), its next tile's loads issued
    before (pipeline) or after a tile's arithmetic; EETJIT_ATTENTION_VEC=0 (vec False) keeps attention.py.j2.
    All give the reference's result."""
    backend = _backend(dtype, split, "auto")
    backend.attention_vec = vec
    saved = backend.attention_vec_tune["pipeline"]
    backend.attention_vec_tune["pipeline"] = int(pipeline)
    per_load = 4 if dtype == "float32" else 8
    try:
        used = _attention_kernels_used(
            backend, lambda: _check_cached(backend, dtype, hh, D, B, 1, min(int(frac * T), T - 1), T, seed))
        assert ("attention_vec" in used) == (vec and D % per_load == 0), used
    finally:
        backend.attention_vec = True
        backend.attention_vec_tune["pipeline"] = saved


@pytest.mark.parametrize("pipeline,unroll,split", [(False, 2, "never"), (True, 1, "never"), (True, 2, "never"),
                                                  (True, 2, "two")])
@pytest.mark.parametrize("dtype,D", [("float16", pick(24, 80)), ("bfloat16", pick(16, 64)), ("float32", pick(16, 64))])
def test_vector_loads_over_many_tiles(where, pipeline, unroll, split, dtype, D):
    """Rows over every column of the cache, no padding, in one block each ("never") or shared evenly by two
    blocks of the fixed split scheme ("two"), each block's columns more than a tile: the loop's loads of the next
    tile (into the second register set with pipeline, after the arithmetic without) carry it past its first tile
    (ragged head dim first). unroll: columns per group and tile (rows >= SMs: the simulator has one)."""
    backend = _backend(dtype, "never", "auto")
    saved = dict(backend.attention_vec_tune), backend.attention_dynamic_splits
    backend.attention_vec_tune.update(pipeline=int(pipeline), unroll=unroll, unroll_many=unroll)
    T = pick(24, 640)
    if split == "two":      # 2 splits (capped by the smallest chunk), under the dynamic scheme's threshold
        backend.attention_vec_tune["blocks_per_sm"] = 10 ** 6
        backend.attention_min_chunk, backend.attention_dynamic_splits = T // 2, 3
    try:
        used = _attention_kernels_used(
            backend, lambda: _check_cached(backend, dtype, (2, 1), D, 2, 1, T - 1, T, seed=5, max_start=0))
        assert "attention_vec" in used, used
    finally:
        backend.attention_vec_tune.update(saved[0])
        backend.attention_dynamic_splits = saved[1]


@pytest.mark.parametrize("dtype,D,live", [("float16", 16, 23), ("bfloat16", 24, 7), ("float32", 8, 30)])
def test_decode_few_rows_take_whole_row_tiles(where, dtype, D, live):
    """A one-token launch of few query rows (at most a quarter of the SMs) takes the few-rows tile
    (`unroll_few` columns a group, unpipelined), so that one tile holds a short row; rows longer than a tile
    carry on over more tiles. Its kernel is the one asked for, and gives the reference's result. The groups of a
    warp merge by exchanges first (D = 16 / 24 / 8: 4, 2 and 4 groups a block in the simulator)."""
    from eetjit.backends.cuda import ATTENTION_VEC_FEW_ROWS_DIV
    backend = _backend(dtype, "never", "auto")
    saved = dict(backend.attention_vec_tune), backend.dev.sm_count
    backend.attention_vec_tune["unroll_few"] = 3
    rows = 2                                                # B 1 x 2 heads
    backend.dev.sm_count = max(backend.dev.sm_count, rows * ATTENTION_VEC_FEW_ROWS_DIV)
    try:
        backend._kernels.clear()
        _check_cached(backend, dtype, (2, 1), D, 1, 1, live, pick(32, 640), seed=7, max_start=0)
        vec = [dict(memo[2]) for memo in backend._kernels if memo[0] == "attention_vec"]
        assert vec and all(c["unroll"] == 3 and not c["pipeline"] for c in vec), vec
    finally:
        backend.attention_vec_tune.update(saved[0])
        backend.dev.sm_count = saved[1]
        backend._kernels.clear()


@pytest.mark.parametrize("single_cols", [0, 4])
def test_decode_reads_the_step_from_the_device(where, single_cols):
    """A captured step replays one launch: the column comes from device memory, so bumping it there moves it.
    With single_cols = 4 the rows of one launch go from one block each (no partials) to a mix (sequence 1 starts
    later) to several blocks, with the per-row counts left at zero in between."""
    backend = _backend("float32", "force")
    backend.attention_single_cols = single_cols
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
    for t in (3, 5, 7, 8):
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


MMA_HEAD_DIMS = pick((16, 32), (32, 64, 80, 96, 128))


@SETTINGS
@given(hh=heads, D=st.sampled_from(MMA_HEAD_DIMS), B=st.integers(1, 3), S=st.integers(1, pick(24, 300)),
       layout=st.sampled_from(["bshd", "cache"]), causal=st.booleans(), dtype=st.sampled_from(["float16", "bfloat16"]),
       pad_rows_unused=st.booleans(), seed=seeds)
def test_prompt_attention_mma(where, hh, D, B, S, layout, causal, dtype, pad_rows_unused, seed):
    """The tensor-core flash attention (attention_mma.py.j2): several query tiles and key tiles, partial tiles at
    both ends of a row's range, left (causal) or right padding, rows with no column, the cache layout with pad
    counts, grouped-query heads; q/k/v as column views of one fused projection. It must be the kernel that ran.
    With pad_rows_unused (the packed encoder's attention) only the real rows are compared."""
    backend = _backend(dtype, "auto", "mma")
    H, Hkv = hh

    def check():
        if layout == "cache":       # a prompt chunk (S > 1: one row is a decode step) after 0 or 7 cached columns;
            t0 = 7 if causal else 0  # pad counts up to the chunk's end
            n = max(S, 2)
            _check_cached(backend, dtype, hh, D, B, n, t0, t0 + n + 5, seed, max_start=t0 + n)
            return
        rng = np.random.default_rng(seed)
        q, k, v = _qkv_views(rng, B, S, H, Hkv, D)
        n = rng.integers(0, S + 1, B)
        n[0] = S
        ranges = (np.stack([S - n, np.full(B, S)], 1) if causal
                  else np.stack([np.zeros(B, int), n], 1)).astype(np.int64)
        attrs = {"num_heads": H, "kv_num_heads": Hkv, "head_dim": D, "scale": 1 / np.sqrt(D), "causal": int(causal),
                 "pad_rows_unused": int(pad_rows_unused)}
        g, node = single_node("Attention", [q, k, v, ranges], attrs)
        want = reference(g, node, [rounded(a, dtype) for a in (q, k, v)] + [ranges])
        got = run_cuda(backend, g, node, [q, k, v, ranges])
        if pad_rows_unused:
            rows = np.arange(S)
            real = (rows >= ranges[:, :1]) & (rows < ranges[:, 1:])          # [B, S]
            got = [np.where(real[..., None], got[0], 0)]
            want = [np.where(real[..., None], want[0], 0)]
        assert_close(got, want, dtype)
    assert _attention_kernels_used(backend, check) == ["attention_mma"]


@SETTINGS
@given(D=st.sampled_from(pick((8, 24), (72, 136, 256))), dtype=DTYPES, seed=seeds)
def test_prompt_attention_mma_declines(where, D, dtype, seed):
    """Negative: float32 and head dims that are not whole k-steps of 16 (or past the register budget) take another
    kernel, with the same result."""
    if dtype != "float32" and D % 16 == 0 and D <= 128:
        D += 8
    backend = _backend(dtype, "auto", "mma")
    rng = np.random.default_rng(seed)
    B, S, H = 2, pick(5, 40), 2
    q, k, v = _qkv_views(rng, B, S, H, H, D)
    ranges = np.array([[0, S], [0, S - 2]], np.int64)
    attrs = {"num_heads": H, "kv_num_heads": H, "head_dim": D, "scale": 1 / np.sqrt(D), "causal": 0}
    g, node = single_node("Attention", [q, k, v, ranges], attrs)
    want = reference(g, node, [rounded(a, dtype) for a in (q, k, v)] + [ranges])

    def check():
        assert_close(run_cuda(backend, g, node, [q, k, v, ranges]), want, dtype)
    used = _attention_kernels_used(backend, check)
    assert used and "attention_mma" not in used, used


def _attention_kernels_used(backend, check):
    """The attention templates `backend` asked for while `check()` ran (its kernel memo, cleared around it; codegen
    keeps the compiled modules)."""
    backend._kernels.clear()
    try:
        check()
        return sorted({memo[0] for memo in backend._kernels if memo[0].startswith("attention")})
    finally:
        backend._kernels.clear()
