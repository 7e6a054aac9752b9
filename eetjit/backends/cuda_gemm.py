"""GEMMs of the CUDA backend: y[M, N] = x[M, K] @ W[K, N] (+ bias) (activation), W and bias fixed at prepare.

GPU: cuBLASLt through nvmath-python. cuBLAS is column-major and puts a bias on the rows of its result, so the
product is computed transposed: y^T (N, M) = W^T (N, K) @ x^T (K, M), all three column-major views of the
row-major arrays (no copies), written in place into `y` (nvmath's `inplace` C operand). Epilogues that compute
the node's function exactly are fused: BIAS, RELU(_BIAS), GELU(_BIAS) (cuBLASLt's GELU is the tanh form);
SiLU and erf-GELU are left to the backend's epilogue kernel. A Matmul is planned once per (M, pointers) and
kept (an LRU per node): the decode step reuses the same buffers, so it never re-plans. A plan holds its operands,
so none is kept while the device is `transient` (an ExecutionPlan's first run of a signature, whose buffers are
temporaries: kept plans would keep every activation of that run alive).
Simulator: np.matmul in float32; nothing fused (the epilogue kernel does bias and activation, so CI tests it).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

from eetjit.backends.cuda_device import CaptureError, Device

# (activation, has_bias) -> cuBLASLt epilogue name, for the pairs cuBLASLt computes exactly.
FUSED_EPILOGUES = {("none", False): "DEFAULT", ("none", True): "BIAS", ("relu", False): "RELU",
                   ("relu", True): "RELU_BIAS", ("gelu_tanh", False): "GELU", ("gelu_tanh", True): "GELU_BIAS"}
PLANS_PER_GEMM = 8
POINTER_ARRAYS_KEPT = 256      # address tables of BatchedGemm.by_pointers (a few per attention op and shape)


class Gemm:
    """A planned GEMM against a fixed weight. `fused_bias` / `fused_activation` say what the GEMM applied;
    the caller runs the epilogue kernel for the rest."""

    def __init__(self, device: Device, W_KN, bias_N=None, activation: str = "none"):
        self.device = device
        self.W_KN = W_KN
        self.K, self.N = W_KN.shape
        has_bias = bias_N is not None
        if device.simulated:
            self.epilogue = None
            self.fused_bias = self.fused_activation = False
            self._W32 = np.asarray(W_KN, np.float32)
        else:
            name = FUSED_EPILOGUES.get((activation, has_bias))
            if name is None and has_bias:       # bias fused, activation left to the epilogue kernel
                name = "BIAS"
            self.epilogue = name
            self.fused_bias = has_bias and name is not None and "BIAS" in name
            self.fused_activation = (activation, has_bias) in FUSED_EPILOGUES or activation == "none"
        self.bias_N = bias_N if self.fused_bias else None
        self._plans: OrderedDict = OrderedDict()
        self.inplace = True     # False once nvmath refused to write into y: results are copied (not capturable)
        self.W_NK = None        # the weight as [N, K], made by the backend's first one-row GEMV (gemv_nk.py.j2)
        self.W_NK_tied = False  # W_NK is the tied token embedding's device table, set by the backend (no copy)

    def __call__(self, x_MK, y_MN) -> None:
        """y_MN[...] = x_MK @ W (with the fused epilogue). y_MN is C-contiguous; x_MK has unit column stride."""
        M = x_MK.shape[0]
        if M == 0 or self.device.deferred is not None:     # deferred: a dry run (Device.deferring)
            return
        if self.device.simulated:
            y_MN[...] = (np.asarray(x_MK, np.float32) @ self._W32).astype(y_MN.dtype)
            return
        key = (M, x_MK.data.ptr, x_MK.strides, y_MN.data.ptr)
        mm = self._plans.get(key)
        if mm is None:
            if self.device.capturing:
                raise CaptureError("a GEMM was planned while capturing a CUDA graph")
            mm = self._plan(x_MK, y_MN)
            if not self.device.transient:       # a plan holds its operands: keep none made for temporaries
                self._plans[key] = mm
                if len(self._plans) > PLANS_PER_GEMM:
                    self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        self.device.keep(mm)                    # a captured graph holds its pointers and workspace
        if self.inplace:
            mm.execute(stream=self.device.stream)
            return
        if self.device.capturing:
            raise CaptureError("this GEMM allocates its result (nvmath refused the in-place form)")
        result = mm.execute(stream=self.device.stream)       # (N, M) column-major = (M, N) row-major
        self.device.copy(y_MN, result.T)

    def _plan(self, x_MK, y_MN):
        from nvmath.linalg.advanced import Matmul, MatmulEpilog
        stream = self.device.stream
        epilog_inputs = {"bias": self.bias_N} if self.fused_bias else None
        epilog = None if self.epilogue in (None, "DEFAULT") else getattr(MatmulEpilog, self.epilogue)
        if self.inplace:
            try:
                mm = Matmul(self.W_KN.T, x_MK.T, c=y_MN.T, beta=0.0, options={"inplace": True}, stream=stream)
                mm.plan(epilog=epilog, epilog_inputs=epilog_inputs, stream=stream)
                return mm
            except Exception as e:  # an nvmath without (or refusing) the in-place form: copy the result
                warnings.warn(f"eetjit: in-place cuBLASLt GEMM unavailable ({type(e).__name__}: {e}); results are "
                              "copied and the decode step is not captured", RuntimeWarning, stacklevel=3)
                self.inplace = False
        mm = Matmul(self.W_KN.T, x_MK.T, stream=stream)
        mm.plan(epilog=epilog, epilog_inputs=epilog_inputs, stream=stream)
        return mm


# cudaDataType / cublasComputeType_t values (cuBLAS API constants)
_CUDA_TYPE = {"float32": 0, "float16": 2, "bfloat16": 14}
_COMPUTE_32F = 68
_GEMM_DEFAULT = -1


class BatchedGemm:
    """Batched GEMMs of attention through nvmath's cuBLAS bindings (cublasGemmBatchedEx), float32 accumulation,
    the output in float32 or the storage type: `by_pointers` multiplies matrices at arbitrary addresses (the
    prompt/encoder attention's every (sequence, head) in one call); `simulate` is its NumPy stand-in for the
    CUDA simulator, which has no addresses."""

    def __init__(self, device: Device):
        self.device = device
        self._handle = None
        self._alphas: dict[float, np.ndarray] = {}      # host scalars cuBLAS reads at launch (kept alive here)
        self._zero = np.array(0.0, np.float32)
        self._pointer_arrays: OrderedDict = OrderedDict()   # (A, B, C addresses) -> their device copy

    def by_pointers(self, a_ptrs, b_ptrs, c_ptrs, M, N, K, lda, ldb, ldc, like, transpose_b=False,
                    alpha=1.0) -> None:
        """C_i (M, N) = alpha * A_i (M, K) @ (B_i^T if transpose_b else B_i) for the row-major matrices at the
        given device addresses (int64 host arrays, one entry per i; rows lda / ldb / ldc elements apart; `like`:
        arrays of A's, B's and C's element types), as one
        cublasGemmBatchedEx (GPU only). The address arrays go to the device once per distinct set and are kept
        (an LRU; captured graphs hold theirs through Device.keep), so a repeated call uploads nothing."""
        if self.device.deferred is not None:      # a dry run (Device.deferring)
            return
        from nvmath.bindings import cublas
        key = (a_ptrs.tobytes(), b_ptrs.tobytes(), c_ptrs.tobytes())
        table = self._pointer_arrays.get(key)
        if table is None:
            if self.device.capturing:
                raise CaptureError("the address arrays of a batched GEMM were built while capturing a CUDA graph")
            # cuBLAS is column-major: row-major C = A @ op(B) is C^T = op(B)^T @ A^T, so its "A" is our B
            table = self.device.upload(np.concatenate([b_ptrs, a_ptrs, c_ptrs]).astype(np.int64))
            self._pointer_arrays[key] = table
            if len(self._pointer_arrays) > POINTER_ARRAYS_KEPT:
                self._pointer_arrays.popitem(last=False)
        else:
            self._pointer_arrays.move_to_end(key)
        self.device.keep(table)
        if self._handle is None:
            self._handle = cublas.create()
        cublas.set_stream(self._handle, self.device.stream.ptr)
        a = self._alphas.get(alpha)
        if a is None:
            a = self._alphas[alpha] = np.array(alpha, np.float32)     # cuBLAS reads it at launch: kept alive
        n, base = len(a_ptrs), table.data.ptr
        ta, tb, tc = (_CUDA_TYPE[_name(x)] for x in like)
        cublas.gemm_batched_ex(self._handle, 1 if transpose_b else 0, 0, N, M, K, a.ctypes.data,
                               base, tb, ldb, base + 8 * n, ta, lda, self._zero.ctypes.data,
                               base + 16 * n, tc, ldc, n, _COMPUTE_32F, _GEMM_DEFAULT)

    def simulate(self, A, B, C, transpose_b=False, alpha=1.0) -> None:
        """The simulator's stand-in for by_pointers: C[i] (M, N) = alpha * A[i] (M, K) @ (B[i]^T if transpose_b
        else B[i]) on 3-D NumPy arrays (views of the same blocks the GPU addresses), float32 accumulation."""
        if self.device.deferred is not None:      # a dry run: its operands are whatever memory held (NaN too)
            return
        Bm = np.asarray(B, np.float32)
        prod = np.asarray(A, np.float32) @ (Bm.transpose(0, 2, 1) if transpose_b else Bm)
        C[...] = (np.float32(alpha) * prod).astype(C.dtype)


def _name(x) -> str:
    from eetjit.backends.cuda_device import is_bfloat16
    if is_bfloat16(x.dtype):
        return "bfloat16"
    return np.dtype(x.dtype).name
