"""Linear (GEMM + bias/activation epilogue, split outputs, padded widths) and SwiGLU on the CUDA backend."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import get_backend
from cuda_helpers import SETTINGS, assert_close, pick, reference, rounded, run_cuda, single_node, values

from eetjit.backends.cpu import ACTIVATIONS

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
seeds = st.integers(0, 2**32 - 1)
# Widths: multiples of the GEMM alignment (64) and odd ones (padded to it, then sliced: the LM head path).
WIDTHS = pick((8, 13, 64, 97), (64, 97, 768, 1000, 3072))
DEPTHS = pick((4, 16), (32, 768, 1024))


def _scale(dtype, K):
    # products of K terms of size ~1 accumulate rounding of the stored inputs
    return 1.0 if dtype == "float32" else max(1.0, np.sqrt(K) / 4)


@SETTINGS
@given(K=st.sampled_from(DEPTHS), N=st.sampled_from(WIDTHS), M=st.integers(1, pick(6, 40)),
       act=st.sampled_from(ACTIVATIONS), has_bias=st.booleans(), path=st.sampled_from(["auto", "gemm", "gemv-nk", "gemv-tc", "gemv", "gemv-scalar", "gemv-mma"]),
       dtype=DTYPES, seed=seeds)
def test_linear(where, K, N, M, act, has_bias, path, dtype, seed):
    """path: "auto" (the launch table: the GEMV kernel for a few rows), "gemm" (cuBLASLt + epilogue kernel; the
    simulator's matmul), "gemv-nk" (gemv_nk.py.j2 on a [N, K] copy of the weight, where K is whole 16-byte
    vectors), "gemv-tc" (gemv_tc.py.j2 on the same copy, half dtypes and up to 32 rows), "gemv" (gemv.py.j2 for any number of rows, K split over several blocks; 16-byte weight loads where
    the width allows, M <= GEMV_VEC_MAX_M), "gemv-scalar" (the same kernel, scalar loads), "gemv-mma"
    (gemv_mma.py.j2 on the tensor cores for any number of rows, where the dtype is a half one and K a multiple of
    16; otherwise cuBLASLt)."""
    backend = _path(get_backend(dtype), path)
    rng = np.random.default_rng(seed)
    x = values(rng, (M, K)) / np.sqrt(K)
    W = values(rng, (K, N))
    bias = values(rng, (N,)) if has_bias else None
    inputs = [x[None], W, bias]
    g, node = single_node("Linear", inputs, {"activation": act}, const={1, 2})
    want = reference(g, node, [rounded(x, dtype)[None], rounded(W, dtype), bias])
    assert_close(run_cuda(backend, g, node, inputs), want, dtype, _scale(dtype, K))


def _path(backend, path):
    from eetjit.backends.cuda import GEMV_MAX_M, GEMV_MMA_MAX_M
    backend.gemv_max_m = {"auto": GEMV_MAX_M[backend.mode], "gemm": 0, "gemv-mma": 0}.get(path, 10 ** 6)
    backend.gemv_mma_max_m = {"auto": GEMV_MMA_MAX_M[backend.mode], "gemv-mma": 10 ** 6}.get(path, 0)
    backend.gemv_vec = path != "gemv-scalar"
    backend.gemv_nk = path in ("auto", "gemv-nk", "gemv-tc")
    backend.gemv_tc = path == "gemv-tc"
    return backend


@SETTINGS
@given(parts=st.lists(st.sampled_from(pick((2, 3, 8), (64, 128, 80))), min_size=2, max_size=3),
       S=st.integers(1, pick(3, 20)), has_bias=st.booleans(), given_out=st.booleans(), seed=seeds)
def test_linear_split(where, parts, S, has_bias, given_out, seed):
    """The fused q/k/v projection: one GEMM, outputs are column slices (views, or copied into given buffers)."""
    backend = _path(get_backend(), "auto")
    rng = np.random.default_rng(seed)
    K, N = 8, sum(parts)
    inputs = [values(rng, (2, S, K)), values(rng, (K, N)), values(rng, (N,)) if has_bias else None]
    g, node = single_node("Linear", inputs, {"activation": "none", "split": parts}, const={1, 2},
                          outputs=len(parts))
    out = [backend.empty((2, S, n)) for n in parts] if given_out else None
    got = backend.prepare(node, g)(inputs, out)
    if given_out:
        assert all(a is b for a, b in zip(got, out))
    assert_close([backend.to_host(x) for x in got], reference(g, node, inputs))


def test_linear_split_views_are_reused_in_place(where):
    """Handing a split Linear the views it returned (a decode step being captured) makes no new buffer."""
    backend = get_backend()
    rng = np.random.default_rng(3)
    inputs = [values(rng, (2, 1, 8)), values(rng, (8, 12)), values(rng, (12,))]
    g, node = single_node("Linear", inputs, {"activation": "none", "split": [4, 4, 4]}, const={1, 2}, outputs=3)
    op = backend.prepare(node, g)
    first = op(inputs)
    inputs2 = [values(rng, (2, 1, 8))] + inputs[1:]
    second = op(inputs2, first)
    assert all(a is b for a, b in zip(first, second))
    assert_close([backend.to_host(x) for x in second], reference(g, node, inputs2))


@SETTINGS
@given(K=st.sampled_from(DEPTHS), F=st.sampled_from(pick((4, 9), (64, 2048, 1000))), M=st.integers(1, pick(3, 40)),
       has_gate_bias=st.booleans(), has_up_bias=st.booleans(), dtype=DTYPES, seed=seeds)
def test_swiglu(where, K, F, M, has_gate_bias, has_up_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x = values(rng, (1, M, K)) / np.sqrt(K)
    Wg, Wu = values(rng, (K, F)), values(rng, (K, F))
    bg = values(rng, (F,)) if has_gate_bias else None
    bu = values(rng, (F,)) if has_up_bias else None
    inputs = [x, Wg, Wu, bg, bu]
    g, node = single_node("SwiGLU", inputs, {}, const={1, 2, 3, 4})
    want = reference(g, node, [rounded(x, dtype), rounded(Wg, dtype), rounded(Wu, dtype), bg, bu])
    assert_close(run_cuda(get_backend(dtype), g, node, inputs), want, dtype, _scale(dtype, K))


# rows, K, N for gemv_mma.py.j2 alone: two 8-row tiles, K over several blocks
MMA_SHAPE = (pick(9, 32), pick(48, 3072), pick(16, 768))
# one row deep enough that gemv_nk gives a column more lanes (GEMV_NK_MAX_VPL; on the GPU several warps, the
# MLP down projection of a GPT-2 XL-size model), the lanes' vectors ragged
NK_WIDE_SHAPE = (1, pick(136, 6400), pick(5, 1600))
# gemv_tc.py.j2 alone: two 16-row A tiles, the second's upper half past M, K ragged in the simulator
TC_ROWS_SHAPE = (pick(19, 32), pick(40, 768), pick(24, 2304))


def _runs_right(backend, dtype, rng, K, N, act, rows):
    """One Linear of a random [K, N] weight and bias, run on a fresh x of each row count in `rows` (the op's scratch
    and counters carried from run to run), each result against the reference."""
    W, bias = values(rng, (K, N)), values(rng, (N,))
    g, node = single_node("Linear", [values(rng, (1, rows[0], K)), W, bias], {"activation": act}, const={1, 2})
    op = backend.prepare(node, g)
    for M in rows:
        x = values(rng, (1, M, K)) / np.sqrt(K)
        want = reference(g, node, [rounded(x, dtype), rounded(W, dtype), bias])
        assert_close([backend.to_host(y) for y in op([x, W, bias])], want, dtype, _scale(dtype, K))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M, K, N", [(1, pick(16, 768), pick(13, 2304)), (3, pick(5, 3072), pick(8, 768)),
                                     (pick(4, 8), pick(17, 1000), pick(9, 97)), (2, pick(40, 768), pick(24, 3072)),
                                     NK_WIDE_SHAPE, MMA_SHAPE, TC_ROWS_SHAPE])
@pytest.mark.parametrize("kernel", ["nk", "nk3", "tc", "vec", "scalar", "mma"])
def test_gemv_many_chunks(where, monkeypatch, M, K, N, dtype, kernel):
    """The GEMV kernels, run twice: gemv.py.j2 with K split over several blocks (the last block of a tile adds the
    chunks; the second run sees the per-tile counters reset by the first) and partial column tiles, with 16-byte
    weight loads where the shape allows (vec: widths of whole vectors, M <= 4) or scalar loads; gemv_nk.py.j2
    (nk: one lane group per output column, where K is whole vectors; otherwise cuBLASLt, no GEMV kernel; nk3: 3
    adjacent columns a group, the last group's partly past N; grids of ceil(N / (groups x columns a group)));
    gemv_tc.py.j2 (tc: the tensor cores over the same [N, K] copy, for half dtypes up to 32 rows in 16-row tiles;
    past that gemv_nk);
    gemv_mma.py.j2 (mma: half dtypes, K a multiple of 16, k ranges over several blocks, the strip's last block
    adding them; otherwise cuBLASLt). Checked to be the variant that ran."""
    from eetjit.backends.cuda import GEMV_NK, GEMV_TC_MAX_M, GEMV_VEC_MAX_M
    if (M, K, N) == MMA_SHAPE and kernel != "mma":
        pytest.skip("gemv_mma's shape (two row tiles, k ranges over blocks); the other kernels have the four before it")
    if (M, K, N) == TC_ROWS_SHAPE and (kernel != "tc" or dtype == "float32"):
        pytest.skip("gemv_tc's shape (two 16-row tiles)")
    if kernel == "nk3" and (M, K, N) in (MMA_SHAPE, TC_ROWS_SHAPE):
        pytest.skip("gemv_mma's and gemv_tc's shapes")
    if (M, K, N) == NK_WIDE_SHAPE and kernel not in ("nk", "nk3", "tc"):
        pytest.skip("the [N, K] kernels' deep shape (gemv_nk's widened columns)")
    backend = get_backend(dtype)
    monkeypatch.setattr(backend, "gemv_nk_cpg", 3 if kernel == "nk3" else backend.gemv_nk_cpg)
    grids = []
    launch = backend.dev.launch
    monkeypatch.setattr(backend.dev, "launch",
                        lambda kern, grid, *a: (grids.append((kern, grid)), launch(kern, grid, *a)))
    try:
        _path(backend, {"nk": "gemv-nk", "nk3": "gemv-nk", "tc": "gemv-tc", "vec": "gemv", "scalar": "gemv-scalar",
                        "mma": "gemv-mma"}[kernel])
        backend._kernels.clear()
        _runs_right(backend, dtype, np.random.default_rng(M * 1000 + K), K, N, "gelu_tanh", [M, M])
    finally:
        _path(backend, "auto")
    per_load = 4 if dtype == "float32" else 8
    ran = {memo[0][5:] if memo[0] != "gemv" else dict(memo[2]).get("vec") for memo in backend._kernels
           if memo[0] in ("gemv", "gemv_nk", "gemv_tc", "gemv_mma")}
    if kernel == "mma":
        assert ran == ({"mma"} if dtype != "float32" and K % 16 == 0 else set()), ran
    elif kernel == "tc":     # float32 or more rows than GEMV_TC_MAX_M: gemv_nk
        assert ran == (set() if K % per_load else {"tc"} if dtype != "float32" and M <= GEMV_TC_MAX_M else {"nk"}), ran
    elif kernel in ("nk", "nk3"):
        assert ran == ({"nk"} if K % per_load == 0 else set()), ran
        nk = {fn: dict(memo[2]) for memo, fn in backend._kernels.items() if memo[0] == "gemv_nk"}
        lanes = {c["lanes"] for c in nk.values()}
        assert {c["cpg"] for c in nk.values()} <= {3 if kernel == "nk3" else backend._nk_tune(K)["cpg"]}
        assert {grid for kern, grid in grids if kern in nk} == \
            {-(-N // (c["groups"] * c["cpg"])) for c in nk.values()}
        assert lanes <= {backend._nk_tune(K)["lanes"]}, lanes
        if (M, K, N) == NK_WIDE_SHAPE and ran:
            assert min(lanes) > GEMV_NK[backend.mode]["lanes"], lanes
    else:
        assert ran == {kernel != "scalar" and M <= GEMV_VEC_MAX_M and N % per_load == 0}, ran


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("one_slot", [True, False])
def test_gemv_mma_shared_rounds(where, monkeypatch, dtype, one_slot):
    """gemv_mma.py.j2 with fewer shared slots than warps (shared memory for one slot: the warps add their tiles into
    it in turn) and with one slot per warp; several k ranges per block, run twice."""
    import eetjit.backends.cuda as cuda_backend
    tune = dict(vw=2, warps=3, steps=1) if where == "sim" else dict(vw=8, warps=8, steps=2)
    M, K, N = (3, 48, 16) if where == "sim" else (12, 768, 2304)
    if one_slot:        # a slot: 8 vw columns x (the 8-row tiles' rows + 1) float32
        monkeypatch.setattr(cuda_backend, "GEMV_MMA_SMEM", 8 * tune["vw"] * (8 * -(-M // 8) + 1) * 4)
    backend = _path(get_backend(dtype), "gemv-mma")
    monkeypatch.setattr(backend, "gemv_mma_tune", tune)
    backend._kernels.clear()
    _runs_right(backend, dtype, np.random.default_rng(7), K, N, "none", [M, M])
    (consts,) = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
    assert consts["warps"] == (3 if where == "sim" else 8)
    assert consts["slots"] == (1 if one_slot else consts["warps"])
    _path(backend, "auto")


@pytest.mark.parametrize("vw", [4, 8])
def test_gemv_mma_tiles_split_and_partial_rounds(where, monkeypatch, vw):
    """gemv_mma.py.j2 with 8- and 16-byte weight loads, two steps per warp (in the last block, lanes whose k segment
    is past K),
    k ranges over blocks, 3 warps adding into 2 shared slots (the second round partial), and a split q/k/v-style
    output of width 40 (not whole strips: the last strip's loads past the stored width read its last vector)."""
    import eetjit.backends.cuda as cuda_backend
    dtype, M, K, parts = "float16", 3, 144 if where == "sim" else 1040, [16, 24]
    backend = _path(get_backend(dtype), "gemv-mma")
    monkeypatch.setattr(backend, "gemv_mma_tune", dict(vw=vw, warps=3, steps=2))
    monkeypatch.setattr(cuda_backend, "GEMV_MMA_SMEM", 2 * 8 * vw * 9 * 4)     # two slots of 8 rows (+1)
    backend._kernels.clear()
    rng = np.random.default_rng(vw)
    W, bias = values(rng, (K, sum(parts))), values(rng, (sum(parts),))
    g, node = single_node("Linear", [values(rng, (1, M, K)), W, bias], {"activation": "silu", "split": parts},
                          const={1, 2}, outputs=len(parts))
    op = backend.prepare(node, g)
    for _ in range(2):
        x = values(rng, (1, M, K)) / np.sqrt(K)
        want = reference(g, node, [rounded(x, dtype), rounded(W, dtype), bias])
        assert_close([backend.to_host(y) for y in op([x, W, bias])], want, dtype, _scale(dtype, K))
    (consts,) = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
    assert (consts["vw"], consts["warps"], consts["slots"]) == (vw, 3, 2) and consts["ksplit"] > 1, consts
    _path(backend, "auto")


def test_gemv_mma_rows_share_a_kernel(where):
    """gemv_mma.py.j2 is specialized by tiles of 8 rows, the row count read from x: 3, 8 and 5 rows run one kernel,
    9 rows a second; each result right."""
    backend = _path(get_backend("float16"), "gemv-mma")
    backend._kernels.clear()
    K, N = (32, 16) if where == "sim" else (768, 2304)
    _runs_right(backend, "float16", np.random.default_rng(11), K, N, "relu", [3, 8, 5, 9])
    assert sorted(dict(memo[2])["mtiles"] for memo in backend._kernels if memo[0] == "gemv_mma") == [1, 2]
    _path(backend, "auto")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("shape, cols", [((37, 50), 64), ((3, 5, 7), None), ((1000,), 1024), ((2, 9), 9)])
def test_upload_cast_converts_and_pads_on_the_device(where, monkeypatch, dtype, shape, cols):
    """Weights reach the GPU as float32 blocks through a small reused staging buffer (here 64 elements: many
    blocks, rows split across none) and are converted and zero-padded there; equal to the host conversion."""
    from eetjit.backends.cuda_device import get_device
    dev = get_device()
    monkeypatch.setattr(dev, "STAGING_ELEMENTS", 64)
    monkeypatch.setattr(dev, "_staging", None, raising=False)
    host = values(np.random.default_rng(len(shape)), shape)
    want = host.astype(dtype)
    if cols is not None:
        want = np.concatenate([want, np.zeros(shape[:-1] + (cols - shape[-1],), dtype)], axis=-1)
    got = dev.to_host(dev.upload_cast(host, dtype, cols))
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_gemv_mma_by_width(where, monkeypatch):
    """gemv_mma by the GEMM's rows and width min(K, N) (gemv_mma_wide): from its deep_min_m rows at widths
    deep_from-max_width gemv_mma runs `steps` k-steps a warp where K is whole segments of them (4 steps a lane: K a
    multiple of 32 for 8 steps); from its cap_min_m rows past max_width cuBLASLt runs the GEMM (the simulator's
    stand-in here), below them gemv_mma with `steps` and past_warps where those hold all of K in one block (one k
    range, past_warps warps), else with the tile; fewer rows, narrower GEMMs or a K of part segments keep the
    tile. Every result right. The GPU's rule (8 steps from 2 rows at widths 769-1024; past 1024 cuBLASLt from 9
    rows, 13 warps below) is not the simulator's: set here to the simulator's sizes."""
    backend = _path(get_backend("float16"), "gemv-mma")
    monkeypatch.setattr(backend, "gemv_mma_wide", dict(deep_min_m=3, deep_from=24, steps=8, cap_min_m=4,
                                                       max_width=32, past_warps=4))
    steps = backend.gemv_mma_tune["steps"]
    assert steps != 8
    rng = np.random.default_rng(5)
    for (K, N, M), want in [((64, 16, 3), steps), ((64, 24, 2), steps), ((64, 24, 3), 8), ((32, 48, 4), 8),
                            ((48, 32, 3), steps), ((64, 40, 4), None), ((512, 40, 3), (8, 1, 4)),
                            ((544, 40, 3), steps), ((48, 40, 2), steps)]:
        backend._kernels.clear()
        _runs_right(backend, "float16", rng, K, N, "none", [M])
        ran = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
        got = [(k["steps"], k["ksplit"], k["warps"]) if isinstance(want, tuple) else k["steps"] for k in ran]
        assert got == ([] if want is None else [want]), (K, N, M, got)
    _path(backend, "auto")


@pytest.mark.gpu
def test_gemv_mma_width_rule_on_the_gpu(where):
    """The GPU's own width rule at the widths it was measured on: GPT-2 medium's 1024 (8 k-steps from 2 rows),
    XL-size's 1600 (below 9 rows 8 k-steps with the warps that hold K in one block; the tile for K = 6400;
    cuBLASLt from 9 rows). Which kernel ran, its steps and k ranges, and every result right."""
    backend = _path(get_backend("float16"), "auto")
    if backend.gemv_mma_wide is None:
        pytest.skip("no width rule here (the simulator's is set by test_gemv_mma_by_width)")
    tile = backend.gemv_mma_tune
    rng = np.random.default_rng(21)
    for (K, N, M), want in [((1024, 3072, 2), (8, 1)), ((1024, 3072, 32), (8, 1)), ((1600, 4800, 2), (8, 1)),
                            ((1600, 4800, 8), (8, 1)), ((6400, 1600, 8), (tile["steps"], 9)),
                            ((1600, 4800, 9), None)]:
        backend._kernels.clear()
        _runs_right(backend, "float16", rng, K, N, "none", [M])
        ran = [(dict(memo[2])["steps"], dict(memo[2])["ksplit"]) for memo in backend._kernels
               if memo[0] == "gemv_mma"]
        assert ran == ([] if want is None else [want]), (K, N, M, ran)


@pytest.mark.parametrize("name, value", [(None, None), ("EETJIT_GEMV_MMA_WIDE", "0"),
                                         ("EETJIT_GEMV_MMA_TUNE", "4,12,4"), ("EETJIT_GEMV_MMA_TUNE", " ")])
def test_gemv_mma_by_width_knobs(monkeypatch, name, value):
    """EETJIT_GEMV_MMA_WIDE=0, or a tile given by EETJIT_GEMV_MMA_TUNE, runs the tile at every width and row count
    (an A/B of that tile); an empty EETJIT_GEMV_MMA_TUNE is no tile given. The rule is the mode's (the GPU's put
    in for the simulator's, which has none)."""
    import eetjit.backends.cuda as cuda_backend
    rule = cuda_backend.GEMV_MMA_WIDE["gpu"]
    assert rule == dict(deep_min_m=2, deep_from=769, steps=8, cap_min_m=9, max_width=1024, past_warps=13)
    monkeypatch.setitem(cuda_backend.GEMV_MMA_WIDE, "sim", rule)
    if name:
        monkeypatch.setenv(name, value)
    be = cuda_backend.CudaBackend("float16", verbose=False)
    on = name is None or not value.strip()
    assert be.gemv_mma_wide == (rule if on else None)
    assert be._mma_tile(32, 1024, 3072)["steps"] == (8 if on else be.gemv_mma_tune["steps"])
    assert be._mma_tile(2, 1024, 3072)["steps"] == (8 if on else be.gemv_mma_tune["steps"])
    assert be._mma_tile(8, 768, 2304)["steps"] == be._mma_tile(8, 6400, 1600)["steps"] == be.gemv_mma_tune["steps"]
    assert be._mma_tile(8, 1600, 4800) == (dict(be.gemv_mma_tune, steps=8, warps=13) if on else be.gemv_mma_tune)
    assert be._mma_tile(8, 2048, 4800)["steps"] == be.gemv_mma_tune["steps"]     # 13 warps do not hold it
    ksplit = be._mma_ksplit(8, 1600, 4800)[0]     # past_warps hold all of K in one block
    assert (ksplit == 1) if on else (ksplit > 1)
    assert be._mma_too_wide(9, 1600, 4800) == on and not be._mma_too_wide(8, 1600, 4800)


@pytest.mark.parametrize("name, value", [("EETJIT_GEMV_TC_TUNE", "0,8,4"), ("EETJIT_GEMV_TC_TUNE", "2,33,4"),
                                         ("EETJIT_GEMV_TC_TUNE", "2,8"), ("EETJIT_GEMV_NK_MAX_VPL", "0"),
                                         ("EETJIT_GEMV_MMA_TUNE", "3,12,4"), ("EETJIT_GEMV_NK_CPG", "-1"),
                                         ("EETJIT_GEMV_NK_CPG", "9"), ("EETJIT_ATTENTION_MIN_CHUNK", "0"),
                                         ("EETJIT_GEMV_MMA_TUNE", "4,x,4")])
def test_gemv_tunes_out_of_range_name_the_variable(where, monkeypatch, name, value):
    """An A/B knob set to a tile the kernels cannot run is refused when the backend is made, naming the knob."""
    from eetjit.backends.cuda import CudaBackend
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        CudaBackend("float16", verbose=False)


def test_gemv_nk_columns_a_group_rule():
    """gemv_nk's columns a group (nk_tune): two where the lanes' last round of vectors holds at most a quarter of
    them (GPT-2 XL-size's K = 1600 and 6400, the latter over 4 warps), one for whole rounds, fuller last rounds and
    rows shorter than a round; a knob's value wins."""
    from eetjit.backends.cuda import GEMV_NK, GEMV_NK_MAX_VPL, nk_tune
    gpu = [nk_tune(GEMV_NK["gpu"], K, 8, GEMV_NK_MAX_VPL["gpu"])["cpg"] for K in (1600, 6400, 768, 3072, 1200, 64)]
    assert gpu == [2, 2, 1, 1, 1, 1]
    # float32 (4-value vectors): K = 1600 over 64 lanes has a thin last round; K = 6400 would too, but a lane
    # there holds more than the limit's vectors even at the widest column
    assert [nk_tune(GEMV_NK["gpu"], K, 4, GEMV_NK_MAX_VPL["gpu"])["cpg"] for K in (1600, 6400)] == [2, 1]
    assert nk_tune(GEMV_NK["gpu"], 768, 8, GEMV_NK_MAX_VPL["gpu"], cpg=3)["cpg"] == 3


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("tie", ["tied", "untied", "off"])
def test_lm_head_tied_to_the_embedding_reads_its_table(where, monkeypatch, dtype, tie):
    """An LM head wider than GEMV_MAX_N whose weight equals the token embedding transposed (a separate array: the
    values are compared) runs on gemv_nk at one row and reads the embedding's device table in place, no [N, K] copy;
    an untied head, or EETJIT_GEMV_TIED_HEAD off, stays with the GEMM, as do two rows. Every result against the
    reference."""
    backend = get_backend(dtype)
    rng = np.random.default_rng(3)
    V, E = pick((40, 16), (1000, 64))
    monkeypatch.setattr(backend, "gemv_max_m", 1)
    monkeypatch.setattr(backend, "gemv_max_n", V - 8)
    monkeypatch.setattr(backend, "gemv_tied_head", tie != "off")
    # the backend is shared: an Embedding an earlier test prepared with the same values (the same seed) would be
    # matched first, a different table of equal values (found by CI's ordering under pytest-xdist)
    monkeypatch.setattr(backend, "_tables", [])
    wte = values(rng, (V, E))
    W = np.ascontiguousarray(wte.T) if tie != "untied" else values(rng, (E, V))
    launches = []
    launch = backend.dev.launch
    monkeypatch.setattr(backend.dev, "launch", lambda kern, grid, threads, *a: (launches.append(a),
                                                                               launch(kern, grid, threads, *a)))
    ge, emb = single_node("Embedding", [np.array([[1, 3]], np.int64), None, wte], {}, const={2})
    backend.prepare(emb, ge)([np.array([[1, 3]], np.int64)], None)   # a session prepares it before the head
    table = next(a for a in launches[-1] if getattr(a, "shape", None) == (V, E))     # the table it read
    launches.clear()
    backend._kernels.clear()
    x = values(rng, (1, 1, E)) / np.sqrt(E)
    g, node = single_node("Linear", [x, W, None], {"activation": "none"}, const={1})
    want = reference(g, node, [rounded(x, dtype), rounded(W, dtype), None])
    assert_close(run_cuda(backend, g, node, [x, W, None]), want, dtype, _scale(dtype, E))
    ran = {memo[0] for memo in backend._kernels}
    assert ("gemv_nk" in ran) == (tie == "tied"), ran
    assert any(a[1] is table for a in launches if len(a) > 1) == (tie == "tied")
    launches.clear()          # two rows (a prompt's): the GEMM over the stored weight, tied or not
    x2 = values(rng, (1, 2, E)) / np.sqrt(E)
    want = reference(g, node, [rounded(x2, dtype), rounded(W, dtype), None])
    assert_close(run_cuda(backend, g, node, [x2, W, None]), want, dtype, _scale(dtype, E))
    assert not any(a[1] is table for a in launches if len(a) > 1)


@pytest.mark.parametrize("prefetch", [True, False])
def test_gemv_nk_prefetches_the_next_weights_first_rows(where, monkeypatch, prefetch):
    """At one row each gemv_nk launch is handed, for an L2 prefetch, the weight of the GEMV launched after it the
    last time (learnt from the launches; the first time a 16-byte dummy): all of it when it is small, its first rows
    up to the prefetch size otherwise (the last GEMV's is the first's). With EETJIT_GEMV_PREFETCH=0 the kernels
    take no such argument. A chain of three GEMVs run twice; every result the reference's; in the simulator, the
    4 KB pieces asked for cover each handed array once, a partial last piece included."""
    from eetjit.backends.cuda_device import SIM_PREFETCHED
    dtype = "float16"
    backend = get_backend(dtype)
    rng = np.random.default_rng(5)
    E, N0, N1, cut = 8, 24, 200, 150        # op 1's weight [N1, N0] is cut to 150 rows (7200 bytes: 2 pieces)
    monkeypatch.setattr(backend, "gemv_max_m", 1)
    monkeypatch.setattr(backend, "gemv_max_n", max(backend.gemv_max_n, N1))
    monkeypatch.setattr(backend, "gemv_nk", True)
    monkeypatch.setattr(backend, "gemv_prefetch", prefetch)
    monkeypatch.setattr(backend, "gemv_prefetch_bytes", float(cut * N0 * 2))
    monkeypatch.setattr(backend, "_pf_last", None)
    monkeypatch.setattr(backend, "_pf_next", {})
    launches = []
    launch = backend.dev.launch
    monkeypatch.setattr(backend.dev, "launch", lambda kern, grid, threads, *a: (launches.append(a),
                                                                               launch(kern, grid, threads, *a)))
    chain = []
    for K, N in ((E, N0), (N0, N1), (N1, E)):
        W, b = values(rng, (K, N)), values(rng, (N,))
        g, node = single_node("Linear", [values(rng, (1, 1, K)), W, b], {"activation": "none"}, const={1, 2})
        chain.append((g, node, W, b, backend.prepare(node, g)))
    for run in range(2):
        launches.clear()
        SIM_PREFETCHED.clear()
        x = values(rng, (1, 1, E))
        for g, node, W, b, op in chain:
            want = reference(g, node, [rounded(x, dtype), rounded(W, dtype), rounded(b, dtype)])
            y = backend.to_host(op([x, W, b], None)[0]).astype(np.float32)
            assert_close([y], want, dtype, _scale(dtype, W.shape[0]))
            x = y
    assert len(launches) == 3
    if not prefetch:
        assert all(len(a) == 4 for a in launches)      # x, w, bias, y: the kernels without the argument
        assert not SIM_PREFETCHED
        return
    from eetjit.backends.cuda import _ptr as ptr
    w = [a[1] for a in launches]                          # each GEMV's [N, K] weight
    pf = [a[-1] for a in launches]
    assert [p.shape for p in pf] == [(cut, N0), (E, N1), (N0, E)]
    assert [ptr(p) for p in pf] == [ptr(w[1]), ptr(w[2]), ptr(w[0])]
    if where == "sim":
        pieces = {}
        for size, off, n in SIM_PREFETCHED:
            pieces.setdefault(size, []).append((off, n))
        assert sorted(pieces) == sorted(p.nbytes for p in pf)
        for size, got in pieces.items():
            got.sort()
            assert got == [(o, min(4096, size - o)) for o in range(0, size, 4096)], (size, got)


def test_gemv_nk_prefetch_only_where_the_card_has_it(where, monkeypatch):
    """The bulk L2 prefetch is an sm_90 instruction: on an older card the backend leaves it out, whatever the knob."""
    from eetjit.backends.cuda import CudaBackend
    from eetjit.backends.cuda_device import get_device
    monkeypatch.setattr(get_device(), "bulk_prefetch", False)
    assert not CudaBackend("float16", verbose=False).gemv_prefetch
    monkeypatch.setattr(get_device(), "bulk_prefetch", True)
    assert CudaBackend("float16", verbose=False).gemv_prefetch
    monkeypatch.setenv("EETJIT_GEMV_PREFETCH", "0")
    assert not CudaBackend("float16", verbose=False).gemv_prefetch


@SETTINGS
@given(M=st.integers(1, pick(4, 40)), N=st.integers(1, pick(70, 3000)), pad=st.integers(0, 70),
       row_blocks=st.sampled_from([2, 65535]), dtype=DTYPES, seed=seeds)
def test_copy_cols_takes_the_first_columns_of_each_row(where, monkeypatch, M, N, pad, row_blocks, dtype, seed):
    """copy_cols.py.j2 (a GEMM's padded result into a Linear's output: the LM head's logits): y = x[:, :N], exact,
    for any width (a last block partly past N) and padding, every element written (y starts as NaN), with a grid of
    at most `row_blocks` rows of blocks (2: blocks take several rows, as past CUDA's 65535), against NumPy's slice."""
    monkeypatch.setattr("eetjit.backends.cuda.COPY_COLS_MAX_ROW_BLOCKS", row_blocks)
    backend = get_backend(dtype)
    rng = np.random.default_rng(seed)
    x = values(rng, (M, N + pad))
    y = backend.dev.upload(np.full((M, N), np.nan, np.float32), backend.dtype)
    backend._kernels.clear()
    backend._copy_cols(y, backend.dev.upload(x, backend.dtype))
    got = np.asarray(backend.to_host(y), np.float32)
    np.testing.assert_array_equal(got, rounded(x, dtype)[:, :N])
    assert [memo[0] for memo in backend._kernels] == ["copy_cols"]
