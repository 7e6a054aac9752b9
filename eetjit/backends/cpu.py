"""The CPU backend: binds each fused `eet` node to its generated Numba kernel; GEMMs go through NumPy's BLAS.

    backend = CpuBackend()
    op = backend.prepare(node, graph)        # weights converted once, kernels compiled (or loaded) now
    outputs = op(inputs)                     # or op(inputs, out=[preallocated, ...])

Constant inputs (weights) are made contiguous in the compute dtype here, once. A kernel is specialized on
the sizes the node fixes (hidden size, heads, head dim, GEMM width) and compiled at `prepare` when the weights
tell them; attention kernels also depend on the sequence bucket and compile at the first call in a new
bucket (or at prepare, given `seq_lens`). Numba does not bounds-check: every index a kernel trusts (token ids,
positions, ranges, shapes) is checked or clipped here first.

The KV-cache steps of generation are methods too: `attention_prefill_cached` and `attention_decode`
(NumPy references in eetjit.backends.reference_cached).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import numpy as np

from eetjit import codegen
from eetjit.codegen import seq_bucket, workers
from eetjit.errors import InputError
from eetjit.ir import Graph, Node

ACTIVATIONS = ("none", "relu", "silu", "gelu_tanh", "gelu_erf")

# Query rows per parallel work item of the attention kernels, by sequence bucket (first match wins): a short
# prompt is one item per (b, head), less scheduling; a long one is split so that few heads still fill the
# cores and the causal triangle is shared out evenly.
ATTENTION_ROWS_PER_BLOCK = ((64, "bucket"), (512, 32), (None, 16))


_cores = workers.usable_cpus


# Below this much work (elements touched, roughly) a kernel runs on the calling thread only. A parallel region
# costs ~12 us on an idle machine (measured, 16 cores, OpenMP layer) and milliseconds when the cores are busy,
# e.g. with OpenBLAS threads still spinning after a GEMM; 2^18 vectorized elements take ~80 us on one core.
# On a machine of few cores every kernel runs on the calling thread: GEMMs (most of the time) run on
# OpenBLAS's threads between the kernels, and after a parallel region libgomp's workers spin (its default
# wait policy, fixed when the process first loaded it, e.g. by importing torch) and take the cores from the
# next GEMM. Measured on 2 cores, GPT-2 small forward b1/b4 s128: 494/1356 ms with parallel kernels,
# 237/796 ms with serial ones (benchmarks/NOTES.md). Not measured yet above 2 cores: hence the bound of 4.
SERIAL_KERNELS_UP_TO_CORES = 4
MIN_PARALLEL_WORK = 1 << 18 if _cores() > SERIAL_KERNELS_UP_TO_CORES else 1 << 62


def launch(kernel, work: int, *args):
    """Call `kernel(*args)`, on the calling thread alone when `work` < MIN_PARALLEL_WORK.

    The thread count is switched here, around the call: calling numba.set_num_threads inside a kernel would
    make Numba refuse to cache it (a "dynamic global")."""
    if work >= MIN_PARALLEL_WORK:
        return kernel(*args)
    get, set_ = _thread_count_functions()
    threads = get()
    if threads <= 1:
        return kernel(*args)
    set_(1)
    try:
        return kernel(*args)
    finally:
        set_(threads)


@functools.lru_cache(maxsize=None)
def _thread_count_functions():
    """Numba's raw per-thread getter/setter (~0.3 us; the public functions validate and lock, ~3 us each),
    else the public ones. Only 1 or a count read back from Numba is ever set, so no validation is skipped."""
    import numba    # here, not at the top: the CUDA backend imports this module and need not import Numba
    numba.get_num_threads()  # starts the thread pool: the raw accessors exist from then on
    from numba.np.ufunc import parallel
    get, set_ = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if callable(get) and callable(set_):
        return get, set_
    return numba.get_num_threads, numba.set_num_threads


# linear_rows (16-bit weights): used for GEMMs of at most this many rows (decode steps), BLAS above. Measured
# on the 2-core VM, GPT-2 LM head [M, 768] @ [768, 50257], weights not in cache: 8 rows 6.4 ms vs 12-13 ms for
# float32 BLAS, 16 rows 10.2 ms (121 GFLOP/s); BLAS at 32 rows 23.9 ms (benchmarks/NOTES.md §5, §10).
ROWS_KERNEL_MAX_ROWS = 32
ROWS_TILE = (4, 6)          # rows x columns summed together in registers
ROWS_BLOCK = 64             # output columns per parallel work item
# linear_bf16 (bfloat16 sessions on CPUs with AVX512-BF16): every GEMM. Tile and tiles per work item.
BF16_TILE = (4, 6)
BF16_BLOCK = 8


@functools.lru_cache(maxsize=None)
def has_avx512_bf16() -> bool:
    """Whether linear_bf16 can be compiled here: the CPU Numba compiles for has AVX512-BF16 (the host's, unless
    NUMBA_CPU_NAME/NUMBA_CPU_FEATURES name another: LLVM aborts the process on the intrinsic otherwise) and LLVM
    is recent enough to spell the intrinsic with `bfloat` vectors and opaque pointers (LLVM 17+). LLVM lists every
    feature it knows, "+name" or "-name" ("-avx512bf16" on a CPU without it): only a "+avx512bf16" entry counts."""
    import llvmlite.binding as llvm
    from numba.core import config
    if tuple(llvm.llvm_version_info) < (17,):
        return False
    name, features = getattr(config, "CPU_NAME", None), getattr(config, "CPU_FEATURES", None)
    if name and name != "host":
        return _feature_on(features or "", "avx512bf16")
    if features:
        return _feature_on(features, "avx512bf16")
    return _feature_on(llvm.get_host_cpu_features().flatten(), "avx512bf16")


def _feature_on(features: str, name: str) -> bool:
    """Whether an LLVM feature string ("+avx2,-avx512bf16,...") turns `name` on."""
    return f"+{name}" in (f.strip() for f in features.split(","))


def half_bits(w: np.ndarray, dtype: str, node=None) -> np.ndarray:
    """float32 weights rounded to float16/bfloat16 (to nearest even), as their uint16 bit patterns."""
    w = np.asarray(w, np.float32)
    where = f"node {node.name!r}: " if node is not None else ""
    if not np.isfinite(w).all():
        raise InputError(f"{where}weights hold NaN or infinity; cannot store them as {dtype}")
    if dtype == "float16":
        big = np.abs(w).max(initial=0.0)
        if big > np.finfo(np.float16).max:
            raise InputError(f"{where}a weight of magnitude {big:.4g} is over float16's range (65504); "
                             "compile with dtype='bfloat16' or 'float32'")
        return w.astype(np.float16).view(np.uint16)
    if dtype != "bfloat16":
        raise InputError(f"16-bit weights must be 'float16' or 'bfloat16', got {dtype!r}")
    import ml_dtypes
    return w.astype(ml_dtypes.bfloat16).view(np.uint16)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest even; NaN stays NaN), as float32."""
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def widen_bits(bits: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 float16/bfloat16 bit patterns -> float32 values (exact)."""
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def rows_per_block(bucket: int) -> int:
    for limit, rows in ATTENTION_ROWS_PER_BLOCK:
        if limit is None or bucket <= limit:
            return bucket if rows == "bucket" else rows
    raise AssertionError("unreachable")


class PreparedOp:
    """A node bound to its kernels: `op(inputs, out=None) -> list of outputs`.

    inputs: one array (or None) per node input, in order (constant inputs may be passed or None: the
    converted copy made at prepare is used). out: None (outputs are allocated) or one C-contiguous array per
    output, of the output's shape and the backend's dtype, written in place and returned."""

    def __init__(self, node: Node, run: Callable, fallback: bool = False):
        self.node = node
        self.fallback = fallback  # True: a plain ONNX op (or an unknown one) run by the reference executor
        self._run = run

    def __call__(self, inputs: list, out: list | None = None) -> list[np.ndarray]:
        return self._run(inputs, out)

    def __repr__(self) -> str:
        how = "reference" if self.fallback else "kernel"
        return f"<PreparedOp {self.node.op_type} {self.node.name!r} ({how})>"


class CpuBackend:
    """Numba CPU kernels for the fused ops of eetjit.fused (the contract)."""

    device = "cpu"
    target = "cpu"

    def __init__(self, dtype: str = "float32", verbose: bool = True, templates_dir=None):
        # Activations, KV cache and every sum are float32 on the CPU (Numba has no fast half type there). A
        # float16/bfloat16 session stores the GEMM weights (Linear, SwiGLU) rounded to that type: decode steps
        # read them at half the bytes. float16: linear_rows for few rows, BLAS on float32 copies of the same
        # rounded values above, so both paths compute with identical weights. bfloat16: the GEMM inputs (x too)
        # are bfloat16, multiplied exactly and summed in float32 (linear_bf16, twice the float32 FMA rate).
        if dtype not in ("float32", "float16", "bfloat16"):
            raise InputError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
        self.dtype = np.dtype(np.float32)
        self.weights = dtype
        # A 16-bit session's decode steps of up to 32 sequences call no BLAS (their GEMMs are linear_rows or
        # linear_bf16, parallel kernels), so the decode attention may use every core too without fighting
        # OpenBLAS's threads (see launch()); its KV-cache reads are memory-bound, and one core does not saturate
        # the memory.
        self.parallel_decode = dtype != "float32"
        # bfloat16 sessions multiply bfloat16 GEMM inputs with float32 sums; linear_bf16 does it with AVX512-BF16
        self.bf16_dot = dtype == "bfloat16" and has_avx512_bf16()
        self.verbose = verbose
        self.templates_dir = templates_dir
        self._kernels: dict = {}
        self._cached_attention: dict = {}
        self._zeros1 = np.zeros(1, self.dtype)
        self._zeros2 = np.zeros((1, 1), self.dtype)
        self._izeros2 = np.zeros((1, 1), np.int64)

    # --- memory (the runtime's ExecutionPlan and KV cache allocate through these) ---------------------
    @property
    def cache_dtype(self) -> np.dtype:
        return self.dtype

    def empty(self, shape, dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    # --- kernels ----------------------------------------------------------------------------------
    def kernel(self, op: str, seq_bucket: int | None = None, **consts):
        """The compiled kernel of template `op` with these specialization constants (memoized here, so a
        call costs one dict lookup after the first)."""
        memo = (op, seq_bucket, tuple(sorted(consts.items())))
        fn = self._kernels.get(memo)
        if fn is None:
            fn = codegen.get_kernel(op, consts, target=self.target, dtype=self.dtype, seq_bucket=seq_bucket,
                                    device=self.device, templates_dir=self.templates_dir)
            self._kernels[memo] = fn
        return fn

    # --- nodes ------------------------------------------------------------------------------------
    def prepare(self, node: Node, graph: Graph | None = None, seq_lens: Iterable[int] = ()) -> PreparedOp:
        """Bind `node` to its kernels. eet ops of the contract get generated kernels; any other node runs on
        the reference executor (PreparedOp.fallback). `seq_lens`: sequence lengths whose buckets the
        attention kernels should be compiled for now rather than at first use."""
        make = getattr(self, f"_prepare_{node.op_type}", None) if node.domain == "eet" else None
        if make is None:
            return PreparedOp(node, _reference_run(node, graph), fallback=True)
        return PreparedOp(node, make(node, tuple(seq_lens)))

    def prepare_all(self, nodes: Iterable[Node], graph: Graph | None = None, seq_lens: Iterable[int] = (),
                    verbose: bool | None = None) -> list[PreparedOp]:
        """prepare() every node, with a progress bar while kernels compile (silent when stderr is not a
        terminal or verbose is False)."""
        nodes = list(nodes)
        verbose = self.verbose if verbose is None else verbose
        return [self.prepare(n, graph, seq_lens) for n in codegen.progress(nodes, verbose=verbose)]

    # --- norms ------------------------------------------------------------------------------------
    def _prepare_LayerNorm(self, node, seq_lens):
        return self._norm(node, "layer_norm", float(node.attrs.get("epsilon", 1e-5)), add=False, has_beta=True)

    def _prepare_AddLayerNorm(self, node, seq_lens):
        return self._norm(node, "add_layer_norm", float(node.attrs.get("epsilon", 1e-5)), add=True, has_beta=True)

    def _prepare_RMSNorm(self, node, seq_lens):
        return self._norm(node, "rms_norm", float(node.attrs.get("epsilon", 1e-6)), add=False, has_beta=False)

    def _prepare_AddRMSNorm(self, node, seq_lens):
        return self._norm(node, "add_rms_norm", float(node.attrs.get("epsilon", 1e-6)), add=True, has_beta=False)

    def _norm(self, node, op, eps, add, has_beta):
        g = 2 if add else 1                      # index of gamma; beta follows it
        gamma = self._operand(node, g)
        beta = self._operand(node, g + 1) if has_beta else None
        consts = dict(epsilon=eps)
        if has_beta:
            consts["has_beta"] = node.input(g + 1) is not None

        def kernel_for(E):
            return self.kernel(op, hidden=E, **consts)

        if node.input(g) is not None and node.input(g).is_const:
            kernel_for(int(np.asarray(node.input(g).const).size))

        def run(inputs, out):
            if add:
                a, b = self._arg(inputs[0]), self._arg(inputs[1])
                shape = np.broadcast_shapes(a.shape, b.shape)
                E = shape[-1]
                if a.shape != shape:                 # the residual stream is normally the full shape
                    a = np.ascontiguousarray(np.broadcast_to(a, shape))
                a_NE = a.reshape(-1, E)
                b_ME = _rows(b, shape, E)
            else:
                a_NE = self._arg(inputs[0])
                shape = a_NE.shape
                E = shape[-1]
                a_NE = a_NE.reshape(-1, E)
            gamma_E = _sized(gamma(inputs), E, node, "gamma")
            y = self._output(out, 0, shape)
            args = [a_NE] + ([b_ME] if add else []) + [gamma_E]
            if has_beta:
                beta_E = beta(inputs)
                args.append(self._zeros1 if beta_E is None else _sized(beta_E, E, node, "beta"))
            args.append(y.reshape(-1, E))
            if not add:
                launch(kernel_for(E), a_NE.size, *args)
                return [y]
            s = self._output(out, 1, shape)
            launch(kernel_for(E), a_NE.size, *args, s.reshape(-1, E))
            return [y, s]
        return run

    # --- GEMM + epilogue --------------------------------------------------------------------------
    def _half_weights(self, node, W_KN, act, has_bias):
        """How a constant weight is multiplied in this session: (the float32 [K, N] weight BLAS reads or None,
        a function (x_MK, bias_N, y_MN) doing GEMM + epilogue in one kernel or None, the most rows it takes).

        float32: BLAS only. float16: the rounded weights for BLAS and linear_rows on the 16-bit Wt for at most
        ROWS_KERNEL_MAX_ROWS rows. bfloat16 with AVX512-BF16: linear_bf16 for every size (no float32 copy);
        without it, as float16 (and the caller rounds x to bfloat16, so the values computed are the same)."""
        if self.weights == "float32":
            return W_KN, None, 0
        K, N = W_KN.shape
        bits_NK = half_bits(np.ascontiguousarray(W_KN.T), self.weights, node)

        def bound(fn, w):   # the caller checked x [M, K] and y [M, N] (the kernels trust both)
            return lambda x_MK, bias_N, y_MN: fn(x_MK, w, bias_N, y_MN)

        if self.bf16_dot:
            Kp = max(32, -(-K // 32) * 32)
            padded = np.zeros((N, Kp), np.uint16)
            padded[:, :K] = bits_NK
            kern = self.kernel("linear_bf16", activation=act, has_bias=has_bias, rows=BF16_TILE[0],
                               cols=BF16_TILE[1], block=BF16_BLOCK)
            # fewer rows than a tile: memory-bound, where linear_rows streams the same weights faster
            few = self.kernel("linear_rows", activation=act, has_bias=has_bias, weights="bfloat16",
                              rows=ROWS_TILE[0], cols=ROWS_TILE[1], block=ROWS_BLOCK)
            pairs = padded.view(np.uint32)

            def bf16(x_MK, w, bias_N, y_MN):
                if x_MK.shape[0] < BF16_TILE[0]:
                    few(_round_bf16(x_MK), padded, bias_N, y_MN)
                else:
                    kern(x_MK, w, bias_N, y_MN)
            return None, bound(bf16, pairs), None
        rounded_KN = np.ascontiguousarray(widen_bits(bits_NK, self.weights).T)
        kern = self.kernel("linear_rows", activation=act, has_bias=has_bias,
                           weights=self.weights, rows=ROWS_TILE[0], cols=ROWS_TILE[1], block=ROWS_BLOCK)
        return rounded_KN, bound(kern, bits_NK), ROWS_KERNEL_MAX_ROWS

    def _gemm_input(self, x_MK):
        """x as a GEMM against a 16-bit constant weight reads it: rounded to bfloat16 in a bfloat16 session that
        has no linear_bf16 (which rounds on its own), so that every CPU computes the same values."""
        return _round_bf16(x_MK) if self.weights == "bfloat16" and not self.bf16_dot else x_MK

    def _prepare_Linear(self, node, seq_lens):
        act = node.attrs.get("activation", "none")
        if isinstance(act, bytes):
            act = act.decode()
        if act not in ACTIVATIONS:
            raise InputError(f"node {node.name!r}: Linear activation {act!r} is not one of {ACTIVATIONS}")
        split = [int(n) for n in (node.attrs.get("split") or [])]
        W = self._operand(node, 1)
        bias = self._operand(node, 2)
        has_bias = node.input(2) is not None
        epilogue = has_bias or act != "none"

        def kernel_for(N):
            return self.kernel("linear_epilogue", width=N, activation=act, has_bias=has_bias)

        rows, max_rows, dims = None, 0, None
        if node.input(1).is_const:
            N = node.input(1).const.shape[-1]
            if split and sum(split) != N:
                raise InputError(f"node {node.name!r}: Linear split {split} does not add up to N={N}")
            dims = node.input(1).const.shape
            blas_KN, rows, max_rows = self._half_weights(node, W(None), act, has_bias)
            if epilogue and blas_KN is not None:
                kernel_for(N)
            W = lambda inputs: blas_KN  # noqa: E731

        def run(inputs, out):
            W_KN = W(inputs)
            K, N = W_KN.shape if dims is None else dims
            if split and sum(split) != N:
                raise InputError(f"node {node.name!r}: Linear split {split} does not add up to N={N}")
            x = np.asarray(inputs[0], self.dtype)
            _check_features(x, K, node)
            lead = x.shape[:-1]
            x_MK = np.ascontiguousarray(x.reshape(-1, K))
            if rows is not None:
                x_MK = self._gemm_input(x_MK)
            whole = None if split else self._output(out, 0, lead + (N,))
            y_MN = np.empty((x_MK.shape[0], N), self.dtype) if split else whole.reshape(-1, N)
            b_N = _sized(bias(inputs), N, node, "bias") if has_bias else self._zeros1
            if rows is not None and (max_rows is None or x_MK.shape[0] <= max_rows):
                rows(x_MK, b_N, y_MN)          # GEMM and epilogue in one pass over the 16-bit weights
            else:
                np.matmul(x_MK, W_KN, out=y_MN)
                if epilogue:
                    launch(kernel_for(N), y_MN.size, y_MN, b_N)
            if not split:
                return [whole]
            outs, start = [], 0
            for i, n in enumerate(split):
                view = y_MN[:, start:start + n].reshape(lead + (n,))
                start += n
                if out is not None and out[i] is not None:
                    np.copyto(self._output(out, i, view.shape), view)
                    view = out[i]
                outs.append(view)
            return outs
        return run

    def _prepare_SwiGLU(self, node, seq_lens):
        # One GEMM against [W_gate | W_up] (concatenated once, here), then the epilogue.
        rows, max_rows, dims = None, 0, None
        if node.input(1).is_const and node.input(2).is_const:
            W_K2F = np.ascontiguousarray(np.concatenate([node.input(1).const, node.input(2).const], axis=1),
                                         self.dtype)
            dims = W_K2F.shape
            W_K2F, rows, max_rows = self._half_weights(node, W_K2F, "none", False)
            W = lambda inputs: W_K2F  # noqa: E731
        else:
            W = lambda inputs: np.concatenate([np.asarray(inputs[1], self.dtype),  # noqa: E731
                                               np.asarray(inputs[2], self.dtype)], axis=1)
        b_gate, b_up = self._operand(node, 3), self._operand(node, 4)
        has_gate_bias, has_up_bias = node.input(3) is not None, node.input(4) is not None

        def kernel_for(F):
            return self.kernel("swiglu_epilogue", width=F, has_gate_bias=has_gate_bias, has_up_bias=has_up_bias)

        if node.input(1).is_const:
            kernel_for(node.input(1).const.shape[-1])

        def run(inputs, out):
            W_K2F = W(inputs)
            K, F2 = W_K2F.shape if dims is None else dims
            F = F2 // 2
            x = np.asarray(inputs[0], self.dtype)
            _check_features(x, K, node)
            lead = x.shape[:-1]
            x_MK = np.ascontiguousarray(x.reshape(-1, K))
            if rows is not None:
                x_MK = self._gemm_input(x_MK)
            if rows is not None and (max_rows is None or x_MK.shape[0] <= max_rows):
                gu_M2F = np.empty((x_MK.shape[0], 2 * F), self.dtype)
                rows(x_MK, self._zeros1, gu_M2F)
            else:
                gu_M2F = np.matmul(x_MK, W_K2F)
            y = self._output(out, 0, lead + (F,))
            launch(kernel_for(F), gu_M2F.size, gu_M2F,
                          _sized(b_gate(inputs), F, node, "b_gate") if has_gate_bias else self._zeros1,
                          _sized(b_up(inputs), F, node, "b_up") if has_up_bias else self._zeros1,
                          y.reshape(-1, F))
            return [y]
        return run

    # --- embedding, rotary ------------------------------------------------------------------------
    def _prepare_Embedding(self, node, seq_lens):
        wte, wpe, wtt = self._operand(node, 2), self._operand(node, 3), self._operand(node, 5)
        gamma, beta = self._operand(node, 6), self._operand(node, 7)
        consts = dict(has_positions=node.input(3) is not None, has_token_types=node.input(5) is not None,
                      has_norm=node.input(6) is not None, has_beta=node.input(7) is not None,
                      epsilon=float(node.attrs.get("epsilon", 1e-5)))

        def kernel_for(E):
            return self.kernel("embedding", hidden=E, **consts)

        if node.input(2).is_const:
            kernel_for(node.input(2).const.shape[-1])

        def run(inputs, out):
            ids_BS = _indices(inputs[0], "input_ids", node)
            if ids_BS.ndim != 2:
                raise InputError(f"node {node.name!r}: token ids must be [batch, sequence], got shape "
                                 f"{list(ids_BS.shape)}")
            B, S = ids_BS.shape
            wte_VE = wte(inputs)
            E = wte_VE.shape[1]
            _check_range(ids_BS, wte_VE.shape[0], "input_ids", "the vocabulary", node)
            pos_PS, wpe_PE = self._izeros2, self._zeros2
            if consts["has_positions"]:
                wpe_PE = wpe(inputs)
                pos = _input(inputs, 1)
                pos_PS = _batch_rows(np.arange(S) if pos is None else pos, B, S, "position_ids", node)
                _check_range(pos_PS, wpe_PE.shape[0], "position_ids", "the position table", node)
            tt_BS, wtt_TE = self._izeros2, self._zeros2
            if consts["has_token_types"]:
                wtt_TE = wtt(inputs)
                tt = _input(inputs, 4)
                tt_BS = np.zeros((B, S), np.int64) if tt is None else np.ascontiguousarray(
                    np.broadcast_to(_indices(tt, "token_type_ids", node), (B, S)))
                _check_range(tt_BS, wtt_TE.shape[0], "token_type_ids", "the token-type table", node)
            for table, name in ((wpe_PE, "wpe"), (wtt_TE, "wtt")):
                if table is not self._zeros2 and table.shape[1] != E:
                    raise InputError(f"node {node.name!r}: {name} has width {table.shape[1]}, wte has {E}")
            gamma_E = _sized(gamma(inputs), E, node, "gamma") if consts["has_norm"] else self._zeros1
            beta_E = _sized(beta(inputs), E, node, "beta") if consts["has_beta"] else self._zeros1
            h = self._output(out, 0, (B, S, E))
            launch(kernel_for(E), h.size, ids_BS, pos_PS, wte_VE, wpe_PE, tt_BS, wtt_TE, gamma_E, beta_E, h)
            return [h]
        return run

    def _prepare_Rotary(self, node, seq_lens):
        H, D = int(node.attrs["num_heads"]), int(node.attrs["head_dim"])
        if D % 2:
            raise InputError(f"node {node.name!r}: Rotary head_dim must be even, got {D}")
        inv_freq = self._operand(node, 2, np.float32)
        kern = self.kernel("rotary", heads=H, head_dim=D, scaling=float(node.attrs.get("scaling", 1.0)))

        def run(inputs, out):
            x_BSX = self._arg(inputs[0])
            if x_BSX.ndim != 3 or x_BSX.shape[2] != H * D:
                raise InputError(f"node {node.name!r}: Rotary expects x [B, S, {H}*{D}], got {list(x_BSX.shape)}")
            B, S, _ = x_BSX.shape
            pos_PS = _batch_rows(inputs[1], B, S, "positions", node)
            y = self._output(out, 0, x_BSX.shape)
            launch(kern, x_BSX.size, x_BSX, pos_PS, _sized(inv_freq(inputs), D // 2, node, "inv_freq"), y)
            return [y]
        return run

    def _prepare_PadInfo(self, node, seq_lens):
        from eetjit.fused.op_attention import pad_info

        def run(inputs, out):
            ranges = pad_info(inputs[0])
            if out is not None and out[0] is not None:
                out[0][...] = ranges
                ranges = out[0]
            return [ranges]
        return run

    # --- attention --------------------------------------------------------------------------------
    def _prepare_Attention(self, node, seq_lens):
        H, Hkv, D, scale = _heads(node.attrs)
        causal = bool(node.attrs.get("causal", 0))

        def kernel_for(T):
            bucket = seq_bucket(T)
            return self.kernel("attention", seq_bucket=bucket, heads=H, kv_heads=Hkv, head_dim=D, scale=scale,
                               causal=causal, rows_per_block=rows_per_block(bucket))

        for S in seq_lens:
            kernel_for(S)

        def run(inputs, out):
            q_BSX, k_BTY, v_BTY = (self._arg(a) for a in inputs[:3])
            B, S, _ = q_BSX.shape
            T = k_BTY.shape[1]
            _check_shape(q_BSX, (B, S, H * D), "q", node)
            _check_shape(k_BTY, (B, T, Hkv * D), "k", node)
            _check_shape(v_BTY, (B, T, Hkv * D), "v", node)
            ranges_B2 = _ranges(_input(inputs, 3), B, T, node)
            y = self._output(out, 0, (B, S, H * D))
            launch(kernel_for(T), q_BSX.size * T, q_BSX, k_BTY, v_BTY, ranges_B2, y)
            return [y]
        return run

    def new_kv_cache(self, batch: int, kv_num_heads: int, max_seq_len: int, head_dim: int):
        """Zeroed (k_cache, v_cache), each [B, Hkv, T_max, D] in the backend's dtype."""
        shape = (batch, kv_num_heads, max_seq_len, head_dim)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    def prepare_attention_prefill_cached(self, num_heads: int, kv_num_heads: int, head_dim: int, scale: float,
                                         seq_lens: Iterable[int] = ()):
        """A function (q, k, v, k_cache, v_cache, ranges, out=None) -> y: write the prompt's K/V [B, S, Hkv*D]
        into cache columns 0..S-1, and causal attention of row i over ranges[b,0] <= c < ranges[b,1], c <= i
        (ranges None: all columns). q [B, S, H*D]; y [B, S, H*D]."""
        H, Hkv, D, scale = _heads(dict(num_heads=num_heads, kv_num_heads=kv_num_heads, head_dim=head_dim,
                                       scale=scale))

        def kernel_for(S):
            bucket = seq_bucket(S)
            return self.kernel("attention_prefill_cached", seq_bucket=bucket, heads=H, kv_heads=Hkv, head_dim=D,
                               scale=scale, rows_per_block=rows_per_block(bucket))

        for S in seq_lens:
            kernel_for(S)

        def run(q, k, v, k_cache, v_cache, ranges=None, out=None):
            q_BSX, k_BSY, v_BSY = self._arg(q), self._arg(k), self._arg(v)
            B, S, _ = q_BSX.shape
            _check_shape(q_BSX, (B, S, H * D), "q", None)
            _check_shape(k_BSY, (B, S, Hkv * D), "k", None)
            _check_shape(v_BSY, (B, S, Hkv * D), "v", None)
            self._check_cache(k_cache, v_cache, B, Hkv, D, S)
            y = out if out is not None else np.empty((B, S, H * D), self.dtype)
            _check_out(y, (B, S, H * D), self.dtype)
            launch(kernel_for(S), q_BSX.size * S, q_BSX, k_BSY, v_BSY, k_cache, v_cache, _ranges(ranges, B, S, None), y)
            return y
        return run

    def prepare_attention_decode(self, num_heads: int, kv_num_heads: int, head_dim: int, scale: float,
                                 max_seq_len: int):
        """A function (q, k_new, v_new, k_cache, v_cache, start, t, out=None) -> y for one decode step:
        q [B, 1, H*D], k_new/v_new [B, 1, Hkv*D] are written into cache column t, and the query attends columns
        start[b]..t inclusive. Specialized on the cache length bucket (max_seq_len): one kernel per session."""
        H, Hkv, D, scale = _heads(dict(num_heads=num_heads, kv_num_heads=kv_num_heads, head_dim=head_dim,
                                       scale=scale))
        kern = self.kernel("attention_decode", seq_bucket=seq_bucket(max_seq_len), heads=H, kv_heads=Hkv,
                           head_dim=D, scale=scale)

        def run(q, k_new, v_new, k_cache, v_cache, start, t, out=None):
            q_B1X, k_B1Y, v_B1Y = self._arg(q), self._arg(k_new), self._arg(v_new)
            B = q_B1X.shape[0]
            _check_shape(q_B1X, (B, 1, H * D), "q", None)
            _check_shape(k_B1Y, (B, 1, Hkv * D), "k_new", None)
            _check_shape(v_B1Y, (B, 1, Hkv * D), "v_new", None)
            t = int(t)
            self._check_cache(k_cache, v_cache, B, Hkv, D, t + 1)
            if t < 0:
                raise InputError(f"decode column t must be >= 0, got {t}")
            start_B = np.clip(np.asarray(start, np.int64).reshape(B), 0, t + 1)
            y = out if out is not None else np.empty((B, 1, H * D), self.dtype)
            _check_out(y, (B, 1, H * D), self.dtype)
            work = MIN_PARALLEL_WORK if self.parallel_decode else q_B1X.size * (t + 1)
            launch(kern, work, q_B1X, k_B1Y, v_B1Y, k_cache, v_cache, start_B, t, y)
            return y
        return run

    # --- generation (eetjit.plan.generation) ------------------------------------------------------------
    def _prepare_CachedAttention(self, node, seq_lens):
        """step 0: the prompt pass (prefill kernel, ranges [start, S)); step > 0: a one-token decode step."""
        a = node.attrs
        H, Hkv, D, scale = a["num_heads"], a.get("kv_num_heads", a["num_heads"]), a["head_dim"], a["scale"]
        prefill = self.prepare_attention_prefill_cached(H, Hkv, D, scale, seq_lens)
        decoders: dict[int, Callable] = {}

        def run(inputs, out):
            q, k, v, k_cache, v_cache, start, step = inputs[:7]
            t0 = int(step.reshape(-1)[0])
            y = None if out is None else out[0]
            if t0 == 0:
                B, S = q.shape[0], q.shape[1]
                ranges = np.stack([np.asarray(start, np.int64).reshape(B), np.full(B, S, np.int64)], axis=1)
                return [prefill(q, k, v, k_cache, v_cache, ranges, out=y)]
            if q.shape[1] != 1:
                raise InputError(f"CachedAttention: a chunk of {q.shape[1]} tokens after the prompt pass "
                                 "is not supported (decode steps take one token)")
            T = k_cache.shape[2]
            fn = decoders.get(T)
            if fn is None:
                fn = decoders[T] = self.prepare_attention_decode(H, Hkv, D, scale, T)
            return [fn(q, k, v, k_cache, v_cache, start, t0, out=y)]
        return run

    def _prepare_LastToken(self, node, seq_lens):
        def run(inputs, out):
            x = inputs[0]
            if out is not None and out[0] is not None:
                out[0][...] = x[:, -1:, :]
                return [out[0]]
            return [np.ascontiguousarray(x[:, -1:, :])]
        return run

    def attention_prefill_cached(self, q, k, v, k_cache, v_cache, ranges=None, *, num_heads, kv_num_heads,
                                 head_dim, scale, out=None):
        """One-shot form of prepare_attention_prefill_cached (the prepared function is memoized)."""
        spec = ("prefill", num_heads, kv_num_heads, head_dim, float(scale))
        fn = self._cached_attention.get(spec)
        if fn is None:
            fn = self._cached_attention[spec] = self.prepare_attention_prefill_cached(
                num_heads, kv_num_heads, head_dim, scale)
        return fn(q, k, v, k_cache, v_cache, ranges, out=out)

    def attention_decode(self, q, k_new, v_new, k_cache, v_cache, start, t, *, num_heads, kv_num_heads,
                         head_dim, scale, out=None):
        """One-shot form of prepare_attention_decode (memoized per cache length)."""
        spec = ("decode", num_heads, kv_num_heads, head_dim, float(scale), seq_bucket(k_cache.shape[2]))
        fn = self._cached_attention.get(spec)
        if fn is None:
            fn = self._cached_attention[spec] = self.prepare_attention_decode(
                num_heads, kv_num_heads, head_dim, scale, k_cache.shape[2])
        return fn(q, k_new, v_new, k_cache, v_cache, start, t, out=out)

    # --- helpers ----------------------------------------------------------------------------------
    def _operand(self, node, i, dtype=None):
        """inputs -> the array of input i: a constant is converted once, here; None when absent."""
        v = node.input(i)
        dtype = self.dtype if dtype is None else dtype
        if v is None:
            return lambda inputs: None
        if v.is_const:
            arr = np.ascontiguousarray(v.const, dtype)
            return lambda inputs: arr
        return lambda inputs: None if _input(inputs, i) is None else np.ascontiguousarray(inputs[i], dtype)

    def _arg(self, x):
        return np.ascontiguousarray(x, self.dtype)

    def _output(self, out, i, shape):
        if out is None or i >= len(out) or out[i] is None:
            return np.empty(shape, self.dtype)
        _check_out(out[i], shape, self.dtype)
        return out[i]

    def _check_cache(self, k_cache, v_cache, B, Hkv, D, needed):
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not (isinstance(c, np.ndarray) and c.ndim == 4 and c.shape[0] == B and c.shape[1] == Hkv
                    and c.shape[3] == D and c.dtype == self.dtype and c.flags.c_contiguous):
                got = f"{getattr(c, 'dtype', type(c).__name__)}{list(getattr(c, 'shape', ()))}"
                raise InputError(f"{name} must be a C-contiguous {self.dtype}[{B}, {Hkv}, T_max, {D}] array "
                                 f"(written in place), got {got}")
            if c.shape[2] < needed:
                raise InputError(f"{name} holds {c.shape[2]} columns, {needed} are needed")


# --- module helpers ---------------------------------------------------------------------------------
def _input(inputs, i):
    return inputs[i] if i < len(inputs) else None


def _rows(x, shape, E):
    """x as [N, E] rows of the broadcast `shape`, or [1, E] when it is one row broadcast over all."""
    if x.shape == tuple(shape):
        return x.reshape(-1, E)
    if x.shape[-1] == E and x.size == E:
        return x.reshape(1, E)
    return np.ascontiguousarray(np.broadcast_to(x, shape)).reshape(-1, E)


def _sized(arr, n, node, name):
    if arr is None or arr.size != n:
        got = "nothing" if arr is None else f"shape {list(arr.shape)}"
        raise InputError(f"node {node.name!r}: {name} must have {n} values, got {got}")
    return arr.reshape(n)


def _check_features(x, K, node):
    """x [..., K] for a GEMM against K input features (a reshape would otherwise make rows of the wrong size)."""
    if x.ndim < 1 or x.shape[-1] != K:
        raise InputError(f"node {node.name!r}: the input has shape {list(x.shape)}, its last axis must be the "
                         f"weight's {K} input features")


def _check_shape(x, shape, name, node):
    if x.shape != tuple(shape):
        where = f"node {node.name!r}: " if node is not None else ""
        raise InputError(f"{where}{name} must have shape {list(shape)}, got {list(x.shape)}")


def _check_out(y, shape, dtype):
    if not (isinstance(y, np.ndarray) and y.shape == tuple(shape) and y.dtype == dtype and y.flags.c_contiguous):
        got = f"{getattr(y, 'dtype', type(y).__name__)}{list(getattr(y, 'shape', ()))}"
        raise InputError(f"output buffer must be a C-contiguous {dtype}{list(shape)} array, got {got}")


def _indices(x, name, node):
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise InputError(f"node {node.name!r}: {name} must be integers, got {x.dtype}")
    return np.ascontiguousarray(x, np.int64)


def _check_range(idx, n, name, table, node):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)]
        raise InputError(f"node {node.name!r}: {name} must lie in [0, {n}) ({table}), got {bad[:5].tolist()}")


def _batch_rows(pos, B, S, name, node):
    """Positions as int64 [1 | B, S] (broadcast rows stay one row)."""
    pos = _indices(pos, name, node)
    if pos.ndim == 1:
        pos = pos[None]
    if pos.ndim != 2 or pos.shape[1] != S or pos.shape[0] not in (1, B):
        try:
            pos = np.ascontiguousarray(np.broadcast_to(pos.reshape(-1, pos.shape[-1]), (B, S)))
        except ValueError:
            raise InputError(f"node {node.name!r}: {name} must broadcast to [{B}, {S}], got "
                             f"{list(pos.shape)}") from None
    return pos


def _ranges(ranges, B, T, node):
    """ranges [B, 2] int64 clipped to [0, T] (the kernels trust them as loop bounds); None: all columns."""
    if ranges is None:
        out = np.zeros((B, 2), np.int64)
        out[:, 1] = T
        return out
    r = np.asarray(ranges)
    if r.shape != (B, 2):
        where = f"node {node.name!r}: " if node is not None else ""
        raise InputError(f"{where}ranges must have shape [{B}, 2], got {list(r.shape)}")
    return np.clip(r, 0, T).astype(np.int64)


def _heads(attrs):
    H = int(attrs["num_heads"])
    Hkv = int(attrs.get("kv_num_heads", H) or H)
    D = int(attrs["head_dim"])
    if H % Hkv:
        raise InputError(f"num_heads ({H}) must be a multiple of kv_num_heads ({Hkv})")
    return H, Hkv, D, float(attrs["scale"])


def _reference_run(node, graph):
    from eetjit.reference.executor import run_node

    def run(inputs, out):
        outs = run_node(node, inputs, graph)
        if out is not None:
            for i, o in enumerate(outs):
                if i < len(out) and out[i] is not None:
                    np.copyto(out[i], o)
                    outs[i] = out[i]
        return outs
    return run
