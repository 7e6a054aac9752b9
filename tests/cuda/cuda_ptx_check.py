"""Compile the GPU variant of every CUDA template to PTX (sm_90) without a GPU: typing, lowering and NVVM run as
they would on the device, so a kernel that cannot compile there fails here (the simulator runs plain Python and
would not notice). Needs NVVM and NVRTC (pip: nvidia-nvvm, nvidia-cuda-nvrtc); exit code 77 when they are
missing. Run as a script (it must import numba.cuda without the simulator):
    python tests/cuda/cuda_ptx_check.py [--quick] [--shard I/N]
(--shard: only the cases whose index is I modulo N, so that N processes can share the work.)
Where a `ptxas` is on the PATH, each PTX is also assembled for sm_90: NVVM passes inline assembly (the tensor-core
and packed-half instructions) through unchecked, ptxas rejects a malformed one.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the source tree

CC = (9, 0)
FP = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}


def cases(quick=False):
    """(dtype, op, consts, argument types) per kernel; quick: half types only, float16 the first size of each
    variant (attention_vec: a head dim of each lane count, 32 / 64 / 128 / 256, and 80 for ragged rows), bfloat16
    the first case of each kernel and of each variant that loads or converts its words differently (norm prologue,
    row statistics, vector width, the decode step's fused write and pipelined tiles); bfloat16 code otherwise
    differs from float16's only in its loads, stores and conversions (the full run compiles every case)."""
    seen = set()
    for c in _cases():
        if quick:
            k = c[2]
            if c[1] == "attention_vec" and k.get("head_dim") == 96:
                continue
            loads = (k.get("norm"), k.get("fold"), k.get("rstats"), k.get("pstats"), k.get("vec"), k.get("vw"),
                     k.get("fused_write"), k.get("pipeline"))
            key = (c[0], c[1], *loads) if c[0] == "bfloat16" else (
                c[0], c[1], k.get("layout"), k.get("split"), k.get("activation"), k.get("causal"),
                k.get("fused_write"), k.get("ksplit"), k.get("head_dim") if c[1] == "attention_vec" else None,
                k.get("vec"), k.get("has_ids"), k.get("advance"), k.get("to_batch"), k.get("scatter"),
                bool(k.get("cols")), k.get("skip_pad_rows"), k.get("norm"), k.get("pdl"), k.get("vw"),
                k.get("pipeline"), k.get("fold"), k.get("rstats"), k.get("pstats"), k.get("cpg"), k.get("prefetch"),
                k.get("cluster"), (k.get("steps"), k.get("mtiles")) if c[1] == "gemv_mma" else None)
            if c[0] == "float32" or key in seen:
                continue
            seen.add(key)
        yield c


PDL_OPS = ("gemv_nk", "gemv_tc", "gemv_mma", "attention_vec", "attention_mma", "argmax", "add_layer_norm",
           "embedding", "linear_epilogue", "copy_cols")


def _cases():
    """Every case, then float16 ones of PDL_OPS again with programmatic dependent launch (pdl: griddepcontrol)."""
    cases = list(_plain_cases())
    yield from cases
    seen = set()
    for dt, op, consts, args in cases:
        # attention_vec: a decode-step case (the fused cache write reads its first tile before the wait)
        if dt == "float16" and op in PDL_OPS and op not in seen and (op != "attention_vec" or consts["fused_write"]):
            seen.add(op)
            yield dt, op, dict(consts, pdl=True), args
        # ... and a cluster one (its barriers beside griddepcontrol)
        if dt == "float16" and op == "attention_vec" and consts.get("cluster") and "cluster" not in seen:
            seen.add("cluster")
            yield dt, op, dict(consts, pdl=True), args


def _nk(K, dt):
    """gemv_nk's tile at depth K on the GPU: lanes a column, columns a block and a group (the backend's rule with the
    default tune and limit)."""
    from eetjit.backends.cuda import GEMV_NK, GEMV_NK_MAX_VPL, nk_tune
    return nk_tune(GEMV_NK["gpu"], K, 4 if dt == "float32" else 8, GEMV_NK_MAX_VPL["gpu"])


def _plain_cases():
    """Every case; `S` stands for the storage element type (bfloat16 arrives as its uint16 bits)."""
    for dt in ("float32", "float16", "bfloat16"):
        S = FP[dt]
        a2, a3 = f"{S}[:, ::1]", f"{S}[:, :, ::1]"
        for E, threads in ((768, 128), (4097, 256), (16384, 512)):
            yield dt, "layer_norm", dict(hidden=E, threads=threads, epsilon=1e-5, has_beta=True), \
                [a2, "float32[::1]", "float32[::1]", a2]
            yield dt, "add_layer_norm", dict(hidden=E, threads=threads, epsilon=1e-5, has_beta=False), \
                [a2, a2, "float32[::1]", "float32[::1]", a2, a2]
            yield dt, "rms_norm", dict(hidden=E, threads=threads, epsilon=1e-6), [a2, "float32[::1]", a2]
            yield dt, "add_rms_norm", dict(hidden=E, threads=threads, epsilon=1e-6), [a2, a2, "float32[::1]", a2, a2]
        yield dt, "copy_cols", dict(width=50257, threads=256, unroll=4), [f"{S}[:, ::1]", a2]
        for act in ("none", "relu", "silu", "gelu_tanh", "gelu_erf"):
            for width in (3072, 1000):
                yield dt, "linear_epilogue", dict(width=width, activation=act, has_bias=True, threads=256, unroll=4), \
                    [a2, "float32[::1]"]
        gemv = dict(lanes=32, cpl=2, warps=8, rows_per_warp=8)
        for M, K, N, ksplit, act in ((1, 768, 2304, 12, "none"), (1, 768, 3072, 12, "gelu_tanh"),
                                     (8, 3072, 768, 48, "silu"), (4, 64, 97, 1, "none")):
            yield dt, "gemv", dict(gemv, m_rows=M, k=K, n=N, ksplit=ksplit, activation=act, has_bias=True,
                                   vec=False), \
                [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]"]
            # past 8 vectors a lane a column takes 2 or 4 warps (_nk), their sums meeting in shared memory
            yield dt, "gemv_nk", dict(_nk(K, dt), m_rows=M, k=K, n=N, activation=act,
                                      has_bias=True), [a2, f"{S}[:, ::1]", "float32[::1]", a2]
            if dt != "float32" and act == "none":    # the tensor-core GEMV over the same [N, K] copy
                yield dt, "gemv_tc", dict(ct=2, warps=4, unroll=4, m_rows=M, k=K, n=N, activation=act,
                                          has_bias=True), [a2, f"{S}[:, ::1]", "float32[::1]", a2]
            if M == 1:      # the NormLinear prologue (q/k/v after an AddLayerNorm; the MLP after an RMSNorm)
                norm = dict(norm="layer", add=True, has_beta=True) if N == 2304 else \
                    dict(norm="rms", add=False, has_beta=False)
                yield dt, "gemv_nk", dict(lanes=32, groups=4, m_rows=M, k=K, n=N, activation=act, has_bias=True,
                                          epsilon=1e-5, **norm), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, a2, "float32[::1]", "float32[::1]", a2]
                if dt != "float32":     # gamma and beta folded into the weight: the norm applied per output
                    yield dt, "gemv_nk", dict(lanes=32, groups=4, m_rows=M, k=K, n=N, activation=act, has_bias=True,
                                              epsilon=1e-5, fold=True, **dict(norm, has_beta=False)), \
                        [a2, f"{S}[:, ::1]", "float32[::1]", a2, a2, "float32[::1]", a2]
            if M <= 4:
                yield dt, "gemv", dict(lanes=32, warps=8, rows_per_warp=4, cpl=4 if dt == "float32" else 8,
                                       m_rows=M, k=K, n=N - N % 8, ksplit=-(-K // 32), activation=act,
                                       has_bias=True, vec=True), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]"]
        # 4 warps a column, a thin last round of vectors: 2 columns a group (fp16)
        yield dt, "gemv_nk", dict(_nk(6400, dt), m_rows=1, k=6400, n=1600, activation="relu",
                                  has_bias=True), [a2, f"{S}[:, ::1]", "float32[::1]", a2]
        if dt != "float32":     # XL-size q/k/v: the folded prologue, 2 columns a group (a thin last round)
            yield dt, "gemv_nk", dict(_nk(1600, dt), m_rows=1, k=1600, n=4800, activation="none", has_bias=True,
                                      epsilon=1e-5, fold=True, norm="layer", add=True, has_beta=False), \
                [a2, f"{S}[:, ::1]", "float32[::1]", a2, a2, "float32[::1]", a2]
            # ... as a decode step launches it on sm_90 (EETJIT_GEMV_PREFETCH, on by default): the next weight into L2
            yield dt, "gemv_nk", dict(_nk(1600, dt), m_rows=1, k=1600, n=4800, activation="none", has_bias=True,
                                      epsilon=1e-5, fold=True, norm="layer", add=True, has_beta=False, pdl=True,
                                      prefetch=True), \
                [a2, f"{S}[:, ::1]", "float32[::1]", a2, a2, "float32[::1]", a2, f"{S}[:, ::1]"]
        if dt != "float32":     # gemv_tc at 32 rows: two 16-row A tiles a chunk
            yield dt, "gemv_tc", dict(ct=2, warps=8, unroll=2, m_rows=32, k=768, n=2304, activation="relu",
                                      has_bias=True), [a2, f"{S}[:, ::1]", "float32[::1]", a2]
        if dt != "float32":     # the tensor-core GEMV of a batch's decode step: 2-, 4- and 8-column weight loads
            # (the fourth: 8 k-steps a warp, the tile GEMV_MMA_WIDE gives GPT-2 medium's up projection at 32 rows)
            for M, K, N, vw, warps, steps, ksplit, slots, act in ((32, 768, 2304, 8, 4, 2, 6, 4, "none"),
                                                                  (8, 3072, 768, 4, 8, 4, 6, 8, "gelu_tanh"),
                                                                  (32, 1024, 4096, 4, 8, 8, 1, 8, "gelu_tanh"),
                                                                  (32, 768, 768, 2, 12, 4, 1, 12, "none"),
                                                                  (2, 64, 96, 2, 2, 2, 1, 1, "silu")):
                yield dt, "gemv_mma", dict(mtiles=-(-M // 8), k=K, n=N, vw=vw, warps=warps, steps=steps, ksplit=ksplit,
                                           slots=slots, activation=act, has_bias=True), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]"]
            # the NormLinear prologue (one k range), with and without programmatic dependent launch
            for pdl in (False, True):
                yield dt, "gemv_mma", dict(mtiles=1, k=768, n=2304, vw=4, warps=12, steps=4, ksplit=1, slots=10,
                                           activation="gelu_tanh", has_bias=True, norm="layer", add=True,
                                           has_beta=True, epsilon=1e-5, pdl=pdl), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2, "float32[::1]",
                     "float32[::1]", a2]
            # ... past 1024 wide below 9 rows (GEMV_MMA_WIDE: 8 k-steps, 13 warps hold K = 1600 in one block, 4 of
            # them in one sub-partition; the launch must fit their registers), the norm folded into the weight as
            # the GPU's half types run it (EETJIT_NORM_FOLD=0's unfolded prologue takes 144-148 registers here, too
            # many for 13 warps: benchmarks/gpu/NOTES.md, session 27)
            for kind in ("layer", "rms"):
                yield dt, "gemv_mma", dict(mtiles=1, k=1600, n=4800, vw=4, warps=13, steps=8, ksplit=1, slots=13,
                                           activation="none", has_bias=True, norm=kind, add=True,
                                           has_beta=False, epsilon=1e-5, fold=True, pdl=True), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2, "float32[::1]",
                     a2]
            # ... gamma folded into the weight (any row count: 4 row tiles), LayerNorm and RMSNorm
            for kind, pdl in (("layer", True), ("rms", False)):
                yield dt, "gemv_mma", dict(mtiles=4, k=768, n=2304, vw=4, warps=12, steps=4, ksplit=1, slots=9,
                                           activation="none", has_bias=True, norm=kind, add=True,
                                           has_beta=False, epsilon=1e-5, fold=True, pdl=pdl), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2, "float32[::1]",
                     a2]
            # eet.NormLinear with its producer: the producer's epilogue adds the residual and writes the row
            # statistics (rstats; one k range and 4 of them), the consumer reads them (pstats partials a row; one
            # k range and 2)
            for ksplit, warps, pdl in ((1, 12, True), (4, 12, False)):
                yield dt, "gemv_mma", dict(mtiles=4, k=768 * ksplit, n=768, vw=4, warps=warps, steps=4,
                                           ksplit=ksplit, slots=9, activation="none", has_bias=True, rstats=True,
                                           pdl=pdl), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2,
                     "float32[:, :, ::1]"]
            # ... GPT-2 medium's B32 down projection (8 k-steps, 3 k ranges of 11 warps: 3 warps a sub-partition;
            # with the epilogue's constants hoisted it did not launch on the H200) and its 16-row one (hoisted)
            for mt in (4, 2):
                yield dt, "gemv_mma", dict(mtiles=mt, k=4096, n=1024, vw=4, warps=11, steps=8, ksplit=3, slots=11,
                                           activation="none", has_bias=True, rstats=True, pdl=True), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2,
                     "float32[:, :, ::1]"]
            for kind, mt, ks, pdl in (("layer", 4, 1, True), ("rms", 1, 1, False), ("layer", 4, 2, False)):
                yield dt, "gemv_mma", dict(mtiles=mt, k=768 * ks, n=2304, vw=4, warps=12, steps=4, ksplit=ks, slots=9,
                                           activation="gelu_tanh", has_bias=True, norm=kind, add=False,
                                           has_beta=False, epsilon=1e-5, fold=True, pstats=24, pdl=pdl), \
                    [a2, f"{S}[:, ::1]", "float32[::1]", a2, "float32[:, :, ::1]", "int32[::1]", a2, "float32[::1]",
                     a2, "float32[:, :, ::1]"]
        yield dt, "swiglu_epilogue", dict(width=2048, has_gate_bias=True, has_up_bias=False), \
            [a2, "float32[::1]", "float32[::1]", a2]
        yield dt, "embedding", dict(hidden=768, threads=128, has_positions=True, has_token_types=True, has_norm=True,
                                    has_beta=True, epsilon=1e-12), \
            ["int64[:, ::1]", "int64[:, ::1]", a2, a2, "int64[:, ::1]", a2, "float32[::1]", "float32[::1]", a2]
        for D in (64, 80, 128):
            yield dt, "rotary", dict(heads=12, head_dim=D, scaling=1.0, threads=256), \
                [f"{S}[:, :, :]", "int64[:, ::1]", "float32[::1]", a3]
        yield dt, "kv_cache_write", dict(kv_heads=4, head_dim=96, threads=96), \
            [f"{S}[:, :, :]", f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]"]
        for D, lanes in ((32, 16), (64, 16), (80, 32), (96, 32), (128, 32), (256, 32)):
            for split in (False, True):
                # single_cols: the fixed split scheme (0) and the one sized by the live columns (decode steps)
                common = dict(heads=12, kv_heads=4, head_dim=D, scale=0.125, lanes=lanes, groups=8, unroll=4,
                              split=split, single_cols=0)
                parts = ["float32[:, :, :, :, ::1]", "float32[:, :, :, :, ::1]", "int32[::1]"]
                for fused_write in (False, True):
                    yield dt, "attention", dict(common, layout="cache", fused_write=fused_write,
                                                single_cols=256 if fused_write else 0), \
                        [f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]", "int64[::1]",
                         "int64", a3] + parts + [f"{S}[:, :, :]", f"{S}[:, :, :]"]
                yield dt, "attention", dict(common, layout="bshd", causal=True), \
                    [f"{S}[:, :, :]", f"{S}[:, :, :]", f"{S}[:, :, :]", "int64[:, ::1]", "int64", a3] + parts
                vec = 4 if dt == "float32" else 8
                vl = min(32, 1 << (D // vec - 1).bit_length())
                for fused_write in (False, True):
                    # the decode step's: the next tile loaded into a second register set, 2 or 4 columns a group
                    pipe = dict(pipeline=True, unroll=2 if split else 4) if fused_write else dict(unroll=4)
                    yield dt, "attention_vec", dict(heads=12, kv_heads=4, head_dim=D, scale=0.125, lanes=vl,
                                                    groups=max(1, 128 // vl), split=split,
                                                    single_cols=256 if fused_write else 0,
                                                    fused_write=fused_write, **pipe), \
                        [f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]", "int64[::1]",
                         "int64", a3] + parts + [f"{S}[:, :, :]", f"{S}[:, :, :]"]
                    if split and fused_write:
                        # the fixed scheme's splits as one thread-block cluster (a B32 decode step: 2 of them)
                        yield dt, "attention_vec", dict(heads=12, kv_heads=4, head_dim=D, scale=0.125, lanes=vl,
                                                        groups=max(1, 128 // vl), split=True, single_cols=0,
                                                        fused_write=True, cluster=2 if D < 256 else 3, **pipe), \
                            [f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]", "int64[::1]",
                             "int64", a3] + parts + [f"{S}[:, :, :]", f"{S}[:, :, :]"]
            if dt != "float32" and D % 16 == 0 and D <= 128:
                mma = dict(heads=12, kv_heads=4, head_dim=D, scale=0.125, warps=4, kt=64 if D <= 64 else 32)
                yield dt, "attention_mma", dict(mma, layout="cache"), \
                    [f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]", "int64[::1]", a3]
                for causal, skip in ((False, False), (True, False), (False, True)):
                    yield dt, "attention_mma", dict(mma, layout="bshd", causal=causal, skip_pad_rows=skip), \
                        [f"{S}[:, :, :]", f"{S}[:, :, :]", f"{S}[:, :, :]", "int64[:, ::1]", a3]
            tiled = dict(heads=12, kv_heads=4, head_dim=D, scale=0.125, lanes=32, warps=4, rows=4,
                         kt=32 if D <= 128 else 8)
            yield dt, "attention_tiled", dict(tiled, layout="cache"), \
                [f"{S}[:, :, :]", f"{S}[:, :, :, ::1]", f"{S}[:, :, :, ::1]", "int64[::1]", "int64[::1]", a3]
            for causal in (False, True):
                yield dt, "attention_tiled", dict(tiled, layout="bshd", causal=causal), \
                    [f"{S}[:, :, :]", f"{S}[:, :, :]", f"{S}[:, :, :]", "int64[:, ::1]", a3]
        for has_ids, advance in ((False, False), (True, False), (True, True)):
            yield dt, "sample", dict(threads=512, has_ids=has_ids, advance=advance), \
                [a2, "float32[::1]", "float32", "int64", "float32", "int64[::1]", "int64[:, ::1]", "int64[:, ::1]",
                 "int64[::1]"]
        sc = "float16[:, ::1]" if dt == "float16" else "float32[:, ::1]"      # the scores' type (_gemm_attention)
        for cols, threads in ((0, 256), (1, 128), (16, 128), (64, 128)):
            warp = dict(cols=cols, lanes=32) if cols else dict(cols=0)
            yield dt, "attention_softmax", dict(heads=12, kv_heads=4, layout="cache", threads=threads, **warp), \
                [sc, "int64[::1]", "int64[::1]", "int64", a2]
            for causal in (False, True):
                yield dt, "attention_softmax", dict(heads=12, kv_heads=4, layout="bshd", causal=causal,
                                                    threads=threads, **warp), \
                    [sc, "int64[:, ::1]", "int64", a2]
        yield dt, "last_token", dict(threads=256), [f"{S}[:, :, :]", a3]
        for scatter in (False, True):
            yield dt, "pack_rows", dict(scatter=scatter, threads=128), [a2, "int64[::1]", a2]
        for advance in (False, True):
            yield dt, "argmax", dict(advance=advance, threads=512, splits=32), \
                [a2, "int64[::1]", "int64[:, ::1]", "int64[:, ::1]", "int64[::1]", "float32[:, ::1]", "int64[:, ::1]",
                 "int32[::1]"]
    yield "float32", "pad_info", dict(threads=64), ["int64[:, ::1]", "int64[:, ::1]"]


# sm_80-sm_90: an SM's 65536 registers are four files of 16384, one per sub-partition, and a block's warps are
# dealt out over the four: the sub-partition holding ceil(warps / 4) of them must fit their registers (allocated 256
# a warp) for the block to launch at all. The driver's JIT may allocate a few more registers than this ptxas
# reports (GPT-2 medium's B32 down projection: 168 here, 170 on the H200, where 3 warps of 170 do not fit), hence
# the margin.
REGISTERS_PER_PARTITION = 16384
REGISTER_MARGIN = 8


def _assemble(ptxas: str, ptx: str, path: Path, threads: int | None = None) -> None:
    """ptxas on the PTX (its .version lowered to one every ptxas of CUDA 12.x reads); raises with its errors, and
    where the block's threads are known (gemv_mma: 32 x warps), when their registers (allocated 256 a warp, plus
    REGISTER_MARGIN a thread) would not fit the sub-partition holding the most of its warps: the launch would fail
    with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES."""
    path.write_text(re.sub(r"\.version \d+\.\d+", ".version 8.0", ptx, count=1))
    out = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-v", str(path), "-o", os.devnull], capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"ptxas: {(out.stderr or out.stdout)[-1500:]}")
    used = re.findall(r"Used (\d+) registers", out.stderr + out.stdout)
    if threads and used:
        regs = int(used[-1])
        warps = -(-threads // 32)
        need = -(-(regs + REGISTER_MARGIN) * 32 // 256) * 256 * -(-warps // 4)
        if need > REGISTERS_PER_PARTITION:
            raise RuntimeError(f"{regs} (+{REGISTER_MARGIN}) registers a thread x {warps} warps need {need} "
                               f"registers in one of the SM's four sub-partitions, over its "
                               f"{REGISTERS_PER_PARTITION}: the launch would fail")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    shard = next((a.split("=", 1)[1] for a in argv if a.startswith("--shard=")), "0/1")
    part, parts = (int(x) for x in shard.split("/"))
    try:
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        cuda.compile_ptx(lambda x: None, "void(int32)", cc=CC)
    except Exception as e:  # no NVVM/NVRTC here
        print(f"skip: cannot compile PTX here ({type(e).__name__}: {e})")
        return 77
    import numba.cuda.dispatcher as dispatcher

    class _Device:                      # device functions ask the current device for its capability
        compute_capability = CC
    dispatcher.get_current_device = lambda: _Device()
    from eetjit.codegen.key import SpecKey, canonical, library_versions
    from eetjit.codegen.render import render, template_source
    failures, count = [], 0
    ptxas = shutil.which("ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (dt, op, consts, args) in enumerate(cases(quick)):
            if i % parts != part:
                continue
            consts = dict(consts, sim=False)
            key = SpecKey(op, "cuda", dt, tuple(sorted((k, canonical(v)) for k, v in consts.items())), None,
                          str(hash(template_source(op, "cuda"))), library_versions("cuda"), CC)
            path = Path(tmp) / f"{key.module_name}.py"
            path.write_text(render(key))
            spec = importlib.util.spec_from_file_location(key.module_name, path)
            mod = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(mod)
                ptx, _ = cuda.compile_ptx(mod.kernel.py_func, f"void({', '.join(args)})", cc=CC)
                if consts.get("cluster") and not all(i in ptx for i in ("mapa.u64", "barrier.cluster.wait")):
                    raise RuntimeError("a cluster kernel without its remote stores or its cluster barrier")
                if ptxas:
                    _assemble(ptxas, ptx, Path(tmp) / f"{key.module_name}.ptx",
                              32 * consts["warps"] if op == "gemv_mma" else None)
                count += 1
            except Exception as e:
                failures.append(f"{op} {dt} {consts}: {type(e).__name__}: {str(e)[:2000]}")
    for f in failures:
        print("FAILED", f)
    print(f"{count} kernels compiled to PTX for sm_{CC[0]}{CC[1]}{' and assembled' if ptxas else ''}, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
