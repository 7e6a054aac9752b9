"""eet.NormLinear on the CUDA backend: the GEMVs with the norm in their prologue (gemv_nk.py.j2 for one row,
gemv_mma.py.j2 for a few rows, norm=...), and the norm kernel then the GEMM where the GEMV cannot take it (more
rows, K not whole vectors or past one block, the knob off).
Against the rounded NumPy chain: the sum and the normalized row rounded to the storage dtype, as the unfused
pair stores them."""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cuda_helpers import EXAMPLES, SETTINGS, assert_close, get_backend, pick, rounded, single_node, values

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
NORM_KERNELS = {"layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm"}


def _want(a, b, gamma, beta, W, bias, kind, act, split, dtype):
    from eetjit.fused._math import layer_norm, rms_norm
    from eetjit.fused.op_linear import linear
    s = rounded(rounded(a, dtype) + rounded(b, dtype), dtype) if b is not None else rounded(a, dtype)
    h = rounded(layer_norm(s, gamma, beta, 1e-5) if kind == "layer" else rms_norm(s, gamma, 1e-5), dtype)
    y = linear(h, rounded(W, dtype), bias, act)
    return (np.split(y, np.cumsum(split)[:-1], axis=-1) if split else [y]) + ([s] if b is not None else [])


def _ran(backend):
    return {memo[0] for memo in backend._kernels}


def _runs_right(backend, seed, kind, add, has_beta, has_bias, M, K, N, parts, b_row, act, dtype):
    """One NormLinear of random operands (split into `parts` when given) on the backend, against _want."""
    rng = np.random.default_rng(seed)
    a = values(rng, (1, M, K))
    b = values(rng, (1, 1 if b_row else M, K)) if add else None
    gamma = values(rng, (K,))
    beta = values(rng, (K,)) if kind == "layer" and has_beta else None
    W, bias = values(rng, (K, N)) / np.sqrt(K), values(rng, (N,)) if has_bias else None
    attrs = {"norm": kind, "add": int(add), "epsilon": 1e-5, "activation": act}
    if parts:
        attrs["split"] = parts
    inputs = [a, b, gamma, beta, W, bias]
    g, node = single_node("NormLinear", inputs, attrs, const={2, 3, 4, 5}, outputs=(len(parts) if parts else 1) + add)
    got = [backend.to_host(y) for y in backend.prepare(node, g)(inputs, None)]
    want = _want(a, b, gamma, beta, W, bias, kind, act, parts, dtype)
    if add and b_row:
        want[-1] = np.broadcast_to(want[-1], (1, M, K))
    assert_close(got, want, dtype, 1.0 if dtype == "float32" else max(1.0, np.sqrt(K) / 4))


@settings(SETTINGS, max_examples=3 * EXAMPLES)      # many independent switches: more examples than usual
@given(kind=st.sampled_from(["layer", "rms"]), add=st.booleans(), has_beta=st.booleans(), has_bias=st.booleans(),
       split=st.booleans(), M=st.integers(1, 3), K=st.sampled_from(pick((16, 24, 20), (768, 1600, 3072, 1000))),
       path=st.sampled_from(["fused", "fused5", "unfused", "gemm"]), b_row=st.booleans(),
       act=st.sampled_from(["none", "gelu_tanh"]), dtype=DTYPES, seed=st.integers(0, 2**32 - 1))
def test_norm_linear(where, kind, add, has_beta, has_bias, split, M, K, path, b_row, act, dtype, seed):
    """path: "fused" (gemv_nk for up to 4 rows, the norm in its prologue where K is whole vectors; fused5: 5 columns a
    lane group, the row's statistics taken once for them, the last group's past N), "unfused" (the
    same GEMV, EETJIT_GEMV_NORM off: the norm kernel first), "gemm" (cuBLASLt / the simulator's matmul). gemv_mma
    is off here (test_norm_linear_mma). b_row: the added term is one row broadcast over the M rows."""
    backend = get_backend(dtype)
    saved_cpg = backend.gemv_nk_cpg
    backend.gemv_max_m, backend.gemv_nk, backend.gemv_norm = {"fused": (4, True, True), "fused5": (4, True, True),
                                                              "unfused": (4, True, False),
                                                              "gemm": (0, True, True)}[path]
    backend.gemv_nk_cpg = 5 if path == "fused5" else saved_cpg
    backend.gemv_mma_max_m = 0
    backend._kernels.clear()
    try:
        N = pick(24, 96)
        _runs_right(backend, seed, kind, add, has_beta, has_bias, M, K, N, [N // 4, N // 4, N // 2] if split else None,
                    b_row, act, dtype)
        per_load = 4 if dtype == "float32" else 8
        from eetjit.backends.cuda import GEMV_NORM_MAX_K
        fused = path.startswith("fused") and K % per_load == 0 and K <= GEMV_NORM_MAX_K
        assert ("gemv_nk" in _ran(backend)) == (path != "gemm" and K % per_load == 0)
        assert bool(_ran(backend) & NORM_KERNELS) == (not fused)
    finally:
        from eetjit.backends.cuda import GEMV_MAX_M, GEMV_MMA_MAX_M
        backend.gemv_max_m, backend.gemv_nk, backend.gemv_norm = GEMV_MAX_M[backend.mode], True, True
        backend.gemv_mma_max_m, backend.gemv_nk_cpg = GEMV_MMA_MAX_M[backend.mode], saved_cpg


@settings(SETTINGS, max_examples=2 * EXAMPLES)
@example(kind="layer", add=True, pre=False, has_bias=True, M=1, K=pick(40, 1600), b_row=True, offset=30.0,
         act="none", dtype="float16", seed=5, cpg=5)      # XL's hidden size, rows far from zero mean
@example(kind="layer", add=True, pre=True, has_bias=True, M=1, K=pick(40, 768), b_row=False, offset=0.0,
         act="gelu_tanh", dtype="bfloat16", seed=6, cpg=0)     # a decode step's pair: the summand's Linear first
@given(kind=st.sampled_from(["layer", "rms"]), add=st.booleans(), pre=st.booleans(), has_bias=st.booleans(),
       M=st.integers(1, 3), K=st.sampled_from(pick((16, 40), (768, 1600, 1000))), b_row=st.booleans(),
       offset=st.sampled_from([0.0, 6.0]), act=st.sampled_from(["none", "gelu_tanh"]),
       dtype=st.sampled_from(["float16", "bfloat16"]), seed=st.integers(0, 2**32 - 1), cpg=st.sampled_from([0, 5]))
def test_norm_linear_nk_folded(where, kind, add, pre, has_bias, M, K, b_row, offset, act, dtype, seed, cpg):
    """gemv_nk.py.j2's folded prologue (gamma and beta in the weight and bias, CudaBackend._fold_norm): the stored
    row (x + b by packed adds, stored by column 0's group) multiplied as it is, the one-pass statistics applied per
    output, rstd (x W' - mean colsum(W')) + b', against the rounded unfused chain at its tolerance (rows offset
    from zero mean lose digits to that subtraction) and, at the dtype's plain tolerance, against that formula in
    float64 from the row it multiplied. No norm kernel runs. pre: the NormLinear holds the Linear that makes its
    summand (W0, b0; fold_producer_linear), which at these rows writes the shared scratch first, as in a one-row
    decode step. cpg: columns a lane group (0: the backend's rule, 2 at K = 40 in the simulator and 1600 on the
    GPU; 5), the statistics taken once for them."""
    backend = get_backend(dtype)
    saved = (backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm, backend.norm_fold, backend.gemv_nk_fold,
             backend.gemv_nk_cpg)
    # folding needs gemv_mma on (fold_norm_affine); up to 4 rows gemv_nk runs first
    backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm, backend.norm_fold, backend.gemv_nk_fold, \
        backend.gemv_nk_cpg = 4, 10 ** 6, True, True, True, cpg
    backend._kernels.clear()
    try:
        rng = np.random.default_rng(seed)
        add, b_row = add or pre, b_row and not pre
        a = values(rng, (1, M, K)) + offset
        b = values(rng, (1, 1 if b_row else M, K)) if add else None
        if pre:     # a is the summand's Linear of x0 (stored rounded), its x0 W0 + b0 spread ~1
            x0, W0, b0 = values(rng, (1, M, K)), values(rng, (K, K)) / np.sqrt(K), values(rng, (K,))
            from eetjit.fused.op_linear import linear
            a = linear(rounded(x0, dtype), rounded(W0, dtype), b0) + offset
            b0 = b0 + offset
        gamma = values(rng, (K,))
        beta = values(rng, (K,)) if kind == "layer" else None
        N = pick(26, 98)     # not a multiple of 2 or 5 groups' columns: the last group's run past N
        W, bias = values(rng, (K, N)) / np.sqrt(K), values(rng, (N,)) if has_bias else None
        attrs = {"norm": kind, "add": int(add), "epsilon": 1e-5, "activation": act, **({"pre": 1} if pre else {})}
        inputs = [x0, b, gamma, beta, W, bias, W0, b0] if pre else [a, b, gamma, beta, W, bias]
        g, node = single_node("NormLinear", inputs, attrs, const={2, 3, 4, 5, 6, 7} if pre else {2, 3, 4, 5},
                              outputs=1 + add)
        got = [backend.to_host(y) for y in backend.prepare(node, g)(inputs, None)]
        want = _want(a, b, gamma, beta, W, bias, kind, act, None, dtype)
        if add and b_row:
            want[-1] = np.broadcast_to(want[-1], (1, M, K))
        assert_close(got, want, dtype, max(1.0, np.sqrt(K) / 4))
        assert {dict(memo[2]).get("fold") for memo in backend._kernels if memo[0] == "gemv_nk"} == \
            (set() if K % 8 else {True, None} if pre else {True})     # pre: the summand's plain GEMV too
        assert not _ran(backend) & NORM_KERNELS or K % 8
        if K % 8 == 0:      # and at the dtype's plain tolerance, the folded norm of the row the kernel multiplied
            s = got[1] if add else rounded(a, dtype)
            assert_close(got[:1], [_folded_from_sum(backend, node, kind, s, act, dtype)], dtype)
    finally:
        backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm, backend.norm_fold, backend.gemv_nk_fold, \
            backend.gemv_nk_cpg = saved


def test_norm_linear_in_a_plan_keeps_qkv_in_one_block(where):
    """In an ExecutionPlan, a split NormLinear's q/k/v outputs are column views of one block (the GEMV writes them in
    place) and its residual sum a buffer of its own; two planned runs give the first run's numbers."""
    from eetjit.runtime.plan import ExecutionPlan
    backend = get_backend("float32")
    backend.gemv_max_m = 4
    try:
        rng = np.random.default_rng(5)
        K, parts = 16, [8, 8, 16]
        inputs = [values(rng, (1, 2, K)), values(rng, (1, 2, K)), values(rng, (K,)), values(rng, (K,)),
                  values(rng, (K, 32)), values(rng, (32,))]
        g, node = single_node("NormLinear", inputs, {"norm": "layer", "add": 1, "epsilon": 1e-5, "split": parts},
                              const={2, 3, 4, 5}, outputs=4)
        reader = g.add_node("Identity", [node.outputs[0]], 1)        # keeps the outputs non-graph-outputs
        readers = [g.add_node("Add", [v, v], 1) for v in node.outputs]
        g.outputs = [r.outputs[0] for r in readers] + [reader.outputs[0]]
        plan = ExecutionPlan(g, backend, verbose=False)
        feeds = {"x0": inputs[0], "x1": inputs[1]}
        first = [backend.to_host(y) for y in plan.run(feeds)]
        assert 0 in plan._columns and plan._columns[0][1] == [0, 8, 16]
        bufs = plan.arena(feeds)[0]
        base = bufs[0].base
        assert all(v.base is base for v in bufs[:3]) and bufs[3].base is not base
        for _ in range(2):
            again = [backend.to_host(y) for y in plan.run(feeds)]
            for x, y in zip(again, first):
                np.testing.assert_array_equal(x, y)
    finally:
        from eetjit.backends.cuda import GEMV_MAX_M
        backend.gemv_max_m = GEMV_MAX_M[backend.mode]


@settings(SETTINGS, max_examples=2 * EXAMPLES)
@example(kind="layer", add=True, has_beta=True, has_bias=True, M=9, K=pick(48, 528), fused=True, fold=False,
         steps=pick(2, 4), b_row=False, act="gelu_tanh", dtype="float16", seed=3)  # two row tiles, lanes past K
@example(kind="layer", add=True, has_beta=True, has_bias=True, M=17, K=pick(48, 528), fused=True, fold=True,
         steps=pick(2, 4), b_row=False, act="gelu_tanh", dtype="bfloat16", seed=4)     # the same, folded, 3 tiles
@given(kind=st.sampled_from(["layer", "rms"]), add=st.booleans(), has_beta=st.booleans(), has_bias=st.booleans(),
       M=st.sampled_from([2, 3, 9]), K=st.sampled_from(pick((16, 32, 48), (528, 768, 1024))), fused=st.booleans(),
       fold=st.booleans(), steps=st.sampled_from(pick((1, 2), (4, 2))), b_row=st.booleans(),
       act=st.sampled_from(["none", "gelu_tanh"]), dtype=st.sampled_from(["float16", "bfloat16"]),
       seed=st.integers(0, 2**32 - 1))
def test_norm_linear_mma(where, kind, add, has_beta, has_bias, M, K, fused, fold, steps, b_row, act, dtype, seed):
    """gemv_mma.py.j2 with the norm in its prologue (rows past gemv_nk's; the block holds all of K: statistics over
    the lanes' segments, the warps meeting in shared memory; lanes whose segment is past K add nothing). fold:
    gamma folded into the weight (CudaBackend._fold_norm), the raw rows multiplied, their statistics from extra
    mma's, the norm applied per output. Where K spans more than one block's k range, the rows are past
    gemv_mma_norm_max_m, or the knob is off (fused=False), the norm kernel runs first (with gamma = 1 where
    folded)."""
    backend = get_backend(dtype)
    saved = (backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm, backend.gemv_mma_tune,
             backend.gemv_mma_norm_max_m, backend.norm_fold)
    backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm = 0, 10 ** 6, fused
    backend.gemv_mma_norm_max_m = 2 if M == 3 else 10 ** 6      # 3 rows past the limit: the norm kernel first
    backend.gemv_mma_tune = dict(saved[3], steps=steps)
    backend.norm_fold = fold
    backend._kernels.clear()
    try:
        _runs_right(backend, seed, kind, add, has_beta, has_bias, M, K, pick(16, 96), None, b_row, act, dtype)
        block_k = backend.gemv_mma_tune["warps"] * steps * 16
        assert "gemv_mma" in _ran(backend)
        takes = fused and K <= block_k and M <= backend.gemv_mma_norm_max_m
        assert bool(_ran(backend) & NORM_KERNELS) == (not takes), (_ran(backend), K, block_k)
        folded = {dict(memo[2]).get("fold", False) for memo in backend._kernels if memo[0] == "gemv_mma"}
        assert folded == {fold and takes}
    finally:
        (backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_norm, backend.gemv_mma_tune,
         backend.gemv_mma_norm_max_m, backend.norm_fold) = saved


def _folded_backend(dtype):
    """The backend with gemv_mma on for any rows, its norm prologue at any row count and folding on; a block's k
    range covering the tests' K (two steps a warp in the simulator)."""
    backend = get_backend(dtype)
    saved = (backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_mma_norm_max_m, backend.norm_fold,
             backend.gemv_mma_tune, backend.gemv_norm)
    backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_mma_norm_max_m, backend.norm_fold = 0, 10 ** 6, 10 ** 6, True
    backend.gemv_norm = True
    backend.gemv_mma_tune = dict(backend.gemv_mma_tune, steps=pick(2, 4))
    return backend, saved


def _restore(backend, saved):
    (backend.gemv_max_m, backend.gemv_mma_max_m, backend.gemv_mma_norm_max_m, backend.norm_fold,
     backend.gemv_mma_tune, backend.gemv_norm) = saved


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0.0, 6.0])
def test_folded_norm_linear_rows_far_from_zero_mean(where, dtype, offset):
    """The folded prologue multiplies the raw rows and subtracts mean x colsum(W') afterwards, so a row whose mean
    is large against its spread loses digits to that cancellation: rows offset by 6 (spread ~1.1) stay within the
    same tolerance as the unfused chain."""
    backend, saved = _folded_backend(dtype)
    backend._kernels.clear()
    try:
        rng = np.random.default_rng(11)
        M, K, N = 9, pick(48, 768), pick(16, 96)
        a = values(rng, (1, M, K)) + offset
        b = values(rng, (1, M, K))
        gamma, beta = values(rng, (K,)), values(rng, (K,))
        W, bias = values(rng, (K, N)) / np.sqrt(K), values(rng, (N,))
        inputs = [a, b, gamma, beta, W, bias]
        g, node = single_node("NormLinear", inputs, {"norm": "layer", "add": 1, "epsilon": 1e-5}, const={2, 3, 4, 5},
                              outputs=2)
        got = [backend.to_host(y) for y in backend.prepare(node, g)(inputs, None)]
        assert {dict(memo[2]).get("fold") for memo in backend._kernels if memo[0] == "gemv_mma"} == {True}
        assert_close(got, _want(a, b, gamma, beta, W, bias, "layer", "none", None, dtype), dtype,
                     max(1.0, np.sqrt(K) / 4))
    finally:
        _restore(backend, saved)


def test_fold_needs_constant_operands_and_a_half_dtype(where):
    """Folding applies only where gemv_mma can take the norm (a half dtype, its rows on) and gamma, beta, W and bias
    are constants; the folded weight is diag(gamma) W (rounded to the storage type by the upload), the bias
    beta W + b, the column sums those of the rounded weight."""
    rng = np.random.default_rng(2)
    K, N = 16, 8
    inputs = [values(rng, (1, 2, K)), None, values(rng, (K,)), values(rng, (K,)), values(rng, (K, N)),
              values(rng, (N,))]
    attrs = {"norm": "layer", "add": 0, "epsilon": 1e-5}
    _, node = single_node("NormLinear", inputs, attrs, const={2, 3, 4, 5})
    _, fed_gamma = single_node("NormLinear", inputs, attrs, const={3, 4, 5})
    args = lambda n: (n, "layer", *(n.input(i) for i in range(2, 6)))     # noqa: E731
    backend, saved = _folded_backend("float16")
    try:
        gamma, beta, W, bias, colsum = backend._fold_norm(*args(node))
        assert beta is None and np.all(gamma.const == 1)
        np.testing.assert_allclose(W.const, inputs[2][:, None] * inputs[4], rtol=1e-6)
        np.testing.assert_allclose(bias.const, inputs[3] @ inputs[4] + inputs[5], rtol=1e-5)
        np.testing.assert_allclose(colsum(), rounded(W.const, "float16").sum(axis=0), rtol=1e-5)
        # a node already in the folded form (a session's graph, fold_norm_affine) keeps its operands: no copy
        _, again = single_node("NormLinear", [inputs[0], None, gamma.const, None, W.const, bias.const], attrs,
                                const={2, 4, 5})
        out = backend._fold_norm(*args(again))
        assert all(x is again.input(i) for x, i in zip(out[:4], (2, 3, 4, 5)))
        assert backend._fold_norm(*args(fed_gamma)) is None
        backend.norm_fold = False
        assert backend._fold_norm(*args(node)) is None
        backend.norm_fold, backend.gemv_mma_max_m = True, 0
        assert backend._fold_norm(*args(node)) is None
    finally:
        _restore(backend, saved)
    assert get_backend("float32")._fold_norm(*args(node)) is None


@settings(SETTINGS, max_examples=2 * EXAMPLES)
@example(kind="layer", M=pick(9, 32), K0=pick(96, 3072), E=pick(96, 1024), vw=4, path="stats", has_b0=True,
         has_bias=True, act="gelu_tanh", dtype="float16", seed=7)   # both GEMMs over k ranges, 2 / 4 row tiles
@given(kind=st.sampled_from(["layer", "rms"]), M=st.sampled_from(pick((2, 9), (9, 17, 32))),
       K0=st.sampled_from(pick((16, 48), (768, 3072))), E=st.sampled_from(pick((32,), (768, 1024))),
       vw=st.sampled_from([2, 4, 8]), path=st.sampled_from(["stats", "kernel"]), has_b0=st.booleans(),
       has_bias=st.booleans(), act=st.sampled_from(["none", "gelu_tanh"]),
       dtype=st.sampled_from(["float16", "bfloat16"]), seed=st.integers(0, 2**32 - 1))
def test_norm_linear_with_producer(where, kind, M, K0, E, vw, path, has_b0, has_bias, act, dtype, seed):
    """eet.NormLinear with its summand's Linear (W0, b0; eetjit.plan.norm_linear.fold_producer_linear): sum =
    x0 W0 + b0 + r. path "stats": gemv_mma runs both GEMMs, the first adding r in its epilogue and writing each
    strip's row sums and sums of squares (rstats), the second normalizing per output from them (pstats); no norm
    kernel. Strips of 64 columns (vw = 8) cannot hand them over (a strip's row spans two warps), nor can rows
    under gemv_mma_stats_min_m (path "kernel"): the Linear, then the NormLinear as usual. Against the rounded
    NumPy chain; where the statistics were handed over, also against the folded norm of the sum the kernel stored
    at the dtype's plain tolerance (a strip's statistics lost or counted twice shows there)."""
    backend, saved = _folded_backend(dtype)
    saved_stats = backend.gemv_mma_stats_min_m
    backend.gemv_mma_stats_min_m = M if path == "stats" else M + 1
    backend.gemv_mma_tune = dict(backend.gemv_mma_tune, vw=vw)
    backend.gemv_mma_norm_max_m = 0              # rows never take the norm in the prologue: only the stats path
    backend._kernels.clear()
    try:
        rng = np.random.default_rng(seed)
        N = pick(16, 96)
        x0, r = values(rng, (1, M, K0)), values(rng, (1, M, E))
        W0, b0 = values(rng, (K0, E)) / np.sqrt(K0), values(rng, (E,)) if has_b0 else None
        gamma = values(rng, (E,))
        beta = values(rng, (E,)) if kind == "layer" else None
        W, bias = values(rng, (E, N)) / np.sqrt(E), values(rng, (N,)) if has_bias else None
        inputs = [x0, r, gamma, beta, W, bias, W0, b0]
        g, node = single_node("NormLinear", inputs, {"norm": kind, "add": 1, "epsilon": 1e-5, "activation": act,
                                                     "pre": 1}, const={2, 3, 4, 5, 6, 7}, outputs=2)
        got = [backend.to_host(y) for y in backend.prepare(node, g)(inputs, None)]
        from eetjit.fused.op_linear import linear
        z = linear(rounded(x0, dtype), rounded(W0, dtype), b0)
        assert_close(got, _want(z, r, gamma, beta, W, bias, kind, act, None, dtype), dtype,
                     max(1.0, np.sqrt(max(E, K0)) / 4))
        kernels = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
        handed = path == "stats" and vw <= 4
        assert any(k.get("rstats") for k in kernels) == handed
        assert any(k.get("pstats") for k in kernels) == handed
        assert bool(_ran(backend) & NORM_KERNELS) == (not handed)
        if handed:
            assert_close(got[:1], [_folded_from_sum(backend, node, kind, got[1], act, dtype)], dtype)
    finally:
        backend.gemv_mma_stats_min_m = saved_stats
        _restore(backend, saved)


def _folded_from_sum(backend, node, kind, s, act, dtype):
    """act(rstd (s W' - mean colsum(W')) + b') in float64 from the stored sum s, with the weights the backend
    folded for the node (W' rounded to the storage type as uploaded)."""
    from eetjit.fused._math import activation
    _, _, Wf, bf, colsum = backend._fold_norm(node, kind, *(node.input(i) for i in range(2, 6)))
    s = np.asarray(s, np.float64)
    mean = s.mean(axis=-1, keepdims=True) if kind == "layer" else 0.0
    rstd = 1.0 / np.sqrt((s * s).mean(axis=-1, keepdims=True) - mean * mean + 1e-5)
    y = rstd * (s @ rounded(Wf.const, dtype).astype(np.float64) - mean * colsum()) + (0 if bf is None else bf.const)
    return activation(y.astype(np.float32), act)


def _layer_norm_with_producer(rng, M, K0, E, N, offset=0.0):
    """A LayerNorm NormLinear with its summand's Linear (pre = 1; every operand a constant but x0 and r, r offset by
    `offset`) and its float16 result through the unfused rounded chain: (inputs, graph, node, want)."""
    from eetjit.fused.op_linear import linear
    x0, r = values(rng, (1, M, K0)), values(rng, (1, M, E)) + offset
    W0, b0 = values(rng, (K0, E)) / np.sqrt(K0), values(rng, (E,))
    gamma, beta = values(rng, (E,)), values(rng, (E,))
    W, bias = values(rng, (E, N)) / np.sqrt(E), values(rng, (N,))
    inputs = [x0, r, gamma, beta, W, bias, W0, b0]
    g, node = single_node("NormLinear", inputs, {"norm": "layer", "add": 1, "epsilon": 1e-5, "pre": 1},
                          const={2, 3, 4, 5, 6, 7}, outputs=2)
    z = linear(rounded(x0, "float16"), rounded(W0, "float16"), b0)
    return inputs, g, node, _want(z, r, gamma, beta, W, bias, "layer", "none", None, "float16")


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_producer_statistics_rows_far_from_zero_mean(where, offset):
    """The handed-over statistics are sums and sums of squares (var = E[x^2] - mean^2, float32): rows offset by 30
    against a spread of ~1.1 (mean^2 / var ~ 750) stay within the unfused chain's tolerance, and within the
    dtype's plain tolerance of the folded norm of the stored sum."""
    backend, saved = _folded_backend("float16")
    saved_stats = backend.gemv_mma_stats_min_m
    backend.gemv_mma_stats_min_m, backend.gemv_mma_norm_max_m = 1, 0
    backend.gemv_mma_tune = dict(backend.gemv_mma_tune, vw=4)
    backend._kernels.clear()
    try:
        M, K0, E, N = 9, pick(32, 768), pick(32, 768), pick(16, 96)
        inputs, g, node, want = _layer_norm_with_producer(np.random.default_rng(12), M, K0, E, N, offset)
        got = [backend.to_host(y) for y in backend.prepare(node, g)(inputs, None)]
        assert any(dict(memo[2]).get("pstats") for memo in backend._kernels if memo[0] == "gemv_mma")
        assert_close(got, want, "float16", max(1.0, np.sqrt(E) / 4))
        assert_close(got[:1], [_folded_from_sum(backend, node, "layer", got[1], "none", "float16")], "float16")
    finally:
        backend.gemv_mma_stats_min_m = saved_stats
        _restore(backend, saved)


@pytest.mark.parametrize("K0, E, N, max_width, handed", [
    (32, 32, 16, 64, True),         # both GEMMs fit: the pair hands the statistics over (the first on deep steps)
    (32, 32, 48, 24, False),        # both past the width: the producer Linear, the add-norm kernel, cuBLASLt
    (16, 32, 48, 24, False),        # the first fits, the second does not
    (48, 32, 16, 24, False),        # the second fits, the first does not
])
def test_producer_pair_by_width(where, monkeypatch, K0, E, N, max_width, handed):
    """_pre_linear's two GEMMs under gemv_mma's width rule (gemv_mma_wide, set to the simulator's sizes): they hand
    the row statistics over only where both run on gemv_mma; where either is too wide, the producer Linear, the
    norm kernel and the second GEMM run as usual. Right both ways, twice (the op's scratch reused)."""
    backend, saved = _folded_backend("float16")
    monkeypatch.setattr(backend, "gemv_mma_stats_min_m", 1)
    monkeypatch.setattr(backend, "gemv_mma_wide", dict(deep_min_m=3, deep_from=8, steps=2, cap_min_m=3,
                                                       max_width=max_width, past_warps=16))
    backend.gemv_mma_norm_max_m = 0
    backend.gemv_mma_tune = dict(backend.gemv_mma_tune, vw=2)
    backend._kernels.clear()
    try:
        inputs, g, node, want = _layer_norm_with_producer(np.random.default_rng(3), 4, K0, E, N)
        op = backend.prepare(node, g)
        for _ in range(2):
            got = [backend.to_host(y) for y in op(inputs, None)]
            assert_close(got, want, "float16", max(1.0, np.sqrt(max(E, K0)) / 4))
        kernels = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
        assert any(k.get("pstats") for k in kernels) == handed
        assert bool(_ran(backend) & NORM_KERNELS) == (not handed)
        if handed:
            assert {k["steps"] for k in kernels} == {2}
    finally:
        _restore(backend, saved)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_prologue_past_the_width(where, monkeypatch, fold, kind):
    """Past gemv_mma's width below the rule's cuBLASLt rows (gemv_mma_wide, set to the test's sizes), `steps` with
    past_warps warps hold all of K in one block, so gemv_mma takes the norm in its prologue, folded into the weight
    or not, and no norm kernel runs (unfolded only up to GEMV_MMA_UNFOLDED_MAX_WARPS warps: its registers do not
    fit more on the GPU, and the norm kernel runs first); with no past_warps the tile splits K over blocks and the
    norm kernel runs first; from the cuBLASLt rows, the norm kernel and cuBLASLt. Right every way."""
    from eetjit.backends import cuda as cuda_backend
    backend, saved = _folded_backend("float16")
    backend.norm_fold = fold
    K, steps, past = pick(128, 1024), pick(2, 8), pick(4, 8)     # the tile's warps x steps x 16 k: under K
    assert backend.gemv_mma_tune["warps"] * backend.gemv_mma_tune["steps"] * 16 < K <= 16 * steps * past
    try:
        # the unfolded prologue's warp limit: past it (lowered here), the same one-block tile without the norm
        low = past - 1
        for M, past_warps, limit, want in [(3, past, 12, "prologue"), (3, 0, 12, "kernel"), (4, past, 12, "cublas"),
                                           (3, past, low, "prologue" if fold else "limited")]:
            monkeypatch.setattr(backend, "gemv_mma_wide", dict(deep_min_m=2, deep_from=8, steps=steps, cap_min_m=4,
                                                               max_width=24, past_warps=past_warps))
            monkeypatch.setattr(cuda_backend, "GEMV_MMA_UNFOLDED_MAX_WARPS", limit)
            backend._kernels.clear()
            _runs_right(backend, 8, kind, True, True, True, M, K, 48, None, False, "none", "float16")
            ran = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
            assert [(k["ksplit"] == 1, bool(k.get("norm"))) for k in ran] == {
                "prologue": [(True, True)], "kernel": [(False, False)], "cublas": [],
                "limited": [(True, False)]}[want], (M, past_warps, ran)
            assert bool(_ran(backend) & NORM_KERNELS) == (want != "prologue")
            if want == "prologue":
                assert [(k["steps"], bool(k.get("fold"))) for k in ran] == [(steps, fold)]
    finally:
        _restore(backend, saved)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [2, 8])
def test_norm_prologue_past_the_width_on_the_gpu(where, M):
    """At GPT-2 XL-size's 1600 wide, below 9 rows, the GPU's width rule runs gemv_mma with 8 k-steps and the warps
    that hold all of K in one block, so it takes the norm in its prologue (the tile would split K over 3 blocks
    and leave the norm to a kernel of its own). Right against the unfused chain."""
    backend = get_backend("float16")
    if backend.gemv_mma_wide is None:
        pytest.skip("no width rule here (the simulator's is set by test_norm_prologue_past_the_width)")
    backend._kernels.clear()
    _runs_right(backend, 7, "layer", True, True, True, M, 1600, 4800, [1600] * 3, False, "none", "float16")
    ran = [dict(memo[2]) for memo in backend._kernels if memo[0] == "gemv_mma"]
    assert [(k["steps"], k["ksplit"], k.get("norm")) for k in ran] == [(8, 1, "layer")]
    assert not _ran(backend) & NORM_KERNELS


@pytest.mark.parametrize("split", [False, True])
def test_folded_norm_linear_too_wide(where, monkeypatch, split):
    """A folded NormLinear (gamma and beta in the weight) past gemv_mma's width from the rule's rows: the norm
    kernel (gamma = 1) and cuBLASLt on the folded weight; below the rule's rows gemv_mma takes the folded norm in
    its prologue. Right both ways, split into q/k/v-style parts or not."""
    backend, saved = _folded_backend("float16")
    monkeypatch.setattr(backend, "gemv_mma_wide", dict(deep_min_m=3, deep_from=8, steps=2, cap_min_m=3,
                                                       max_width=24, past_warps=16))
    parts = [16, 16, 16] if split else None
    try:
        for M, wide in [(4, True), (2, False)]:
            backend._kernels.clear()
            _runs_right(backend, 5, "layer", True, True, True, M, 32, 48, parts, False, "gelu_tanh", "float16")
            folded = {dict(memo[2]).get("fold") for memo in backend._kernels if memo[0] == "gemv_mma"}
            assert folded == (set() if wide else {True})
            assert bool(_ran(backend) & NORM_KERNELS) == wide
    finally:
        _restore(backend, saved)
