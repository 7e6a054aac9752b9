"""The CUDA backend: binds each fused `eet` node to generated Numba CUDA kernels and cuBLASLt GEMMs.

    backend = CudaBackend(dtype="float16")
    op = backend.prepare(node, graph)        # weights uploaded once (fp32 | fp16 | bf16), GEMMs set up
    outputs = op(inputs)                     # or op(inputs, out=[preallocated device arrays, ...])

Same interface as eetjit.backends.cpu (`prepare`, `prepare_all`, `PreparedOp`, reference fallback for plain
ONNX ops), plus what the runtime needs for device memory (`empty`, `zeros`, `to_host`, `cache_dtype`) and for
greedy decoding on the device (`greedy_tokens`). Inputs may be host (NumPy) or device arrays; outputs are
device arrays. Activations and weights are stored in the session dtype; every kernel computes in float32
(norm statistics, softmax, epilogues). Norm weights and epilogue biases stay float32. In float16/bfloat16, a
session's graph comes with each norm's gamma and beta folded into the Linears that read it (`fold_norm_affine`);
a NormLinear bound on its own gets a folded copy of its weight (`_fold_norm`).

Whether this runs on a GPU (CuPy + nvmath + Numba) or in Numba's CUDA simulator (NumPy) is decided in one
place, eetjit.backends.cuda_device; templates get it as the constant `sim`.

Everything an op launches can be captured into a CUDA graph (eetjit.runtime.cuda_graph): inputs that change
per decode step (token ids, positions, pad counts, the step) are read by the kernels from device memory, never
baked in as launch arguments; attention of a one-token step is sized by the cache capacity, not the current
length; and no op allocates when it is handed its `out` buffers (temporaries live in per-op scratch that a
captured step keeps alive; the one-row GEMV's [N, K] weight copy is made once, at its first run, which is eager).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterable

import numpy as np

from eetjit import codegen
from eetjit.backends.cpu import ACTIVATIONS, PreparedOp, _batch_rows, _check_range, _heads, _indices
from eetjit.backends.cuda_device import CaptureError, get_device, is_bfloat16, storage_dtype, stream_context
from eetjit.backends.cuda_gemm import BatchedGemm, Gemm
from eetjit.errors import InputError
from eetjit.ir import Graph, Node, Value
from eetjit.plan.norm_linear import folded_weights
from eetjit.plan.structure import tied_to_embedding

# --- launch configurations (data; the simulator runs each thread as a Python thread: keep blocks tiny there) ---
# threads per block of the row kernels (norms, embedding, rotary, last token, argmax), by hidden size
ROW_THREADS_GPU = ((1024, 128), (4096, 256), (None, 512))
ROW_THREADS_SIM = 8
NORM_THREADS_ENV = "EETJIT_NORM_THREADS"     # A/B knob: threads per block of the norm kernels (a multiple of 32)
ELEMENTWISE_THREADS = {"gpu": 256, "sim": 8}
ELEMENTWISE_BLOCKS_PER_SM = {"gpu": 16, "sim": 2}       # grid-stride loops: at most this many blocks per SM
EPILOGUE_UNROLL = {"gpu": 4, "sim": 2}                 # linear_epilogue: elements per thread per pass (loads in flight)
# H200, the argmax of GPT-2's 50257 logits alone as a graph (bench_gemv.py --vocab, session 13), threads,splits:
# 512,32 6.1 / 14.7 us at 1 / 32 rows; 128,32 5.3 / 7.8; 128,16 6.5 / 7.3; 256,8 6.6 / 7.7
ARGMAX_THREADS = {"gpu": 128, "sim": 8}
# blocks per logits row of the greedy argmax (the last one reduces their partials): one block scanning a 50k-word
# vocabulary took 14 us of a 0.36 ms B1 step on the H100; at most ARGMAX_THREADS
ARGMAX_SPLITS = {"gpu": 32, "sim": 2}
ARGMAX_TUNE_ENV = "EETJIT_ARGMAX_TUNE"     # A/B knob: "threads,splits" overrides ARGMAX_THREADS / ARGMAX_SPLITS
# attention: lanes per key column (a power of two <= 32) by head dim, and columns in flight per block
ATTENTION_LANES_GPU = ((64, 16), (None, 32))
ATTENTION_LANES_SIM = 4
ATTENTION_GROUPS = {"gpu": 8, "sim": 2}
ATTENTION_UNROLL = {"gpu": 4, "sim": 2}                  # adjacent columns per group per iteration (loads in flight)
# attention over the KV cache with 16-byte loads (attention_vec.py.j2), when the head dim is a whole number of
# 16-byte vectors and the cache is 16-byte aligned: threads per block (lanes per column = the power of two >= the
# vectors in a row, at most 32); EETJIT_ATTENTION_VEC=0 keeps attention.py.j2 (for A/B measurements)
ATTENTION_VEC_THREADS = {"gpu": 128, "sim": 8}
ATTENTION_VEC_BLOCKS_PER_SM = {"gpu": 4, "sim": 4}      # its flash-decoding split (H100: 4 beat 8 and 16 at B32)
# The next tile's key/value rows are loaded into a second set of registers before a tile's arithmetic (1), not after
# it (0); a launch of at least one query row per SM takes ATTENTION_VEC_UNROLL_MANY columns per group and tile
# (fewer registers, more resident blocks), fewer rows ATTENTION_UNROLL (more loads in flight per block). H200,
# decode replay: B32 x 512 0.683 -> 0.641 ms (pipelined, 2 columns), B1 x 64 0.275 -> 0.228 (pipelined, 4).
ATTENTION_VEC_PIPELINE = {"gpu": 1, "sim": 1}
ATTENTION_VEC_UNROLL_MANY = {"gpu": 2, "sim": 1}     # the simulator has 1 SM: every launch takes this
# A/B knob, off (0): a launch of few query rows (at most a quarter of the SMs) takes ATTENTION_VEC_UNROLL_FEW columns
# per group and tile, unpipelined, so that one tile (12 x 16 groups = 192 columns) holds a short row and all its loads
# go out before the block waits for the q/k/v GEMM (fused cache write, programmatic launch). H200, GPT-2 small
# B1 x 64 + 128 (session 23): the step 0.199 / 0.200 -> 0.196 / 0.197 ms over rows of 65-191 columns, but the
# replays, rows of 192-242 (a second, nearly empty, unpipelined tile), 0.192 / 0.193 -> 0.195 / 0.194. At B8 x 512
# (96 rows) 12 columns cost 0.323 -> 0.364 (185 registers), hence the row limit. Past the benchmark's lengths
# (session 24, ms/step, small 2 rounds): small B1 x 64 0.198-0.200 -> 0.195-0.197, but B1 x 200 0.211-0.212 ->
# 0.220-0.221, B1 x 512 0.223 -> 0.234-0.235, B2 x 512 0.275 -> 0.291; medium (1 round) B1 x 64 0.445 -> 0.423,
# B1 x 512 0.482 -> 0.506. Longer rows lose with it, and neither giving a group every 16th column of the tile nor
# skipping the loads past the row's end (172 registers) changed that; my guess (not shown) is that blocks this large
# cannot become resident beside the q/k/v GEMV's, so their early loads come late. Off: one graph serves every length.
ATTENTION_VEC_UNROLL_FEW = {"gpu": 0, "sim": 0}
ATTENTION_VEC_FEW_ROWS_DIV = 4
ATTENTION_VEC_ENV = "EETJIT_ATTENTION_VEC"
# A/B knob: "threads,unroll,unroll_many,blocks_per_sm,pipeline,unroll_few" overrides ATTENTION_VEC_THREADS,
# ATTENTION_UNROLL, ATTENTION_VEC_UNROLL_MANY, ATTENTION_VEC_BLOCKS_PER_SM, ATTENTION_VEC_PIPELINE and
# ATTENTION_VEC_UNROLL_FEW for the vector kernel (benchmarks/gpu/ab_decode.sh)
ATTENTION_VEC_TUNE_ENV = "EETJIT_ATTENTION_VEC_TUNE"
# flash-decoding split: aim at this many blocks per SM, never give a block fewer than MIN_CHUNK columns. H200, GPT-2
# small B1 x 64 + 128 new (session 15, replay ms/step): 0.209 with the default (a cache of 208 columns: 4 splits of 52,
# so the dynamic scheme below, whose rows of up to 256 live columns run in their first split alone; session 17);
# one block a head (MIN_CHUNK 256: the unsplit kernel) 0.222, with 256 / 512 threads 0.231 / 0.252; 256 threads
# split 0.211. Session 17: the fixed scheme there (all 4 splits take part, the last block merges) 0.224-0.225 against
# 0.203-0.204, and no better with the merge moved into the output projection's GEMV (benchmarks/gpu/NOTES.md).
ATTENTION_BLOCKS_PER_SM = {"gpu": 8, "sim": 4}
ATTENTION_MIN_CHUNK = {"gpu": 64, "sim": 4}
ATTENTION_MIN_CHUNK_ENV = "EETJIT_ATTENTION_MIN_CHUNK"   # A/B knob: overrides ATTENTION_MIN_CHUNK
# A launch of at least ATTENTION_DYNAMIC_SPLITS splits (the launch is sized by the cache capacity) runs only the
# splits that hold live columns, and a row of at most ATTENTION_SINGLE_COLS of them in its first block alone: no
# partials to publish, count and merge. H100, B1 decode attention (11 splits): 8.4 -> 5.3 us at 96 columns, 8.0 ->
# 7.3 at 300; with 2 splits (B32 x 576) the same code cost 1.8 us of 28, so fewer splits keep the fixed scheme,
# where every split takes part and the kernel shares the row's live columns out evenly (not by the capacity).
ATTENTION_SINGLE_COLS = {"gpu": 256, "sim": 4}
ATTENTION_DYNAMIC_SPLITS = {"gpu": 4, "sim": 2}
# The fixed scheme's splits of a row (fewer than ATTENTION_DYNAMIC_SPLITS, and at most ATTENTION_CLUSTER_MAX, the
# portable cluster size) run as one thread-block cluster where the device launches clusters (sm_90): each block
# stores its merge into block 0's shared memory and block 0 merges them after a cluster barrier, in place of
# partials in global memory, a fence, a count and the last block's loads. H200, GPT-2 small B32 x 512 (session 27):
# replay 0.497 -> 0.479 ms. EETJIT_ATTENTION_CLUSTER=0 keeps the global-memory merge (A/B).
ATTENTION_CLUSTER_MAX = 8
ATTENTION_CLUSTER_ENV = "EETJIT_ATTENTION_CLUSTER"
# many queries per (b, h) (a prompt, an encoder batch): the tiled kernel (attention_tiled.py.j2) from this many rows
# on; lanes per warp, warps per block, query rows per warp, and key columns per shared-memory tile by head dim
ATTENTION_TILE_MIN_ROWS = {"gpu": 16, "sim": 3}
ATTENTION_TILE = {"gpu": dict(lanes=32, warps=4, rows=4), "sim": dict(lanes=4, warps=2, rows=2)}
ATTENTION_TILE_COLS_GPU = ((128, 32), (None, 8))
ATTENTION_TILE_COLS_SIM = 2
ATTENTION_TILE_SMEM = 46 * 1024     # static shared memory a tiled block may use (the limit is 48 KiB)
# From this many query rows on, when the key columns are known on the host (a prompt pass, an encoder batch),
# attention runs as two batched tensor-core GEMMs around a softmax kernel (CudaBackend._gemm_attention), as long as
# its scores (float32) and probabilities fit ATTENTION_GEMM_MAX_BYTES; past that the tiled kernel streams them.
ATTENTION_GEMM_MIN_ROWS = {"gpu": 16, "sim": 3}
# ... but first, for float16/bfloat16 with head dims of whole 16-element k-steps up to ATTENTION_MMA_MAX_D (the
# accumulators stay in registers): flash attention on the tensor cores (attention_mma.py.j2), which reads K/V once
# per 16 * warps query rows, skips key tiles outside a row's range and never stores the scores.
# EETJIT_ATTENTION_MMA=0 keeps the GEMM path (A/B measurements).
ATTENTION_MMA = {"gpu": dict(warps=4, kt=64), "sim": dict(warps=1, kt=16)}
ATTENTION_MMA_MIN_ROWS = {"gpu": 16, "sim": 3}
ATTENTION_MMA_MAX_D = 128
ATTENTION_MMA_ENV = "EETJIT_ATTENTION_MMA"
ATTENTION_MMA_TUNE_ENV = "EETJIT_ATTENTION_MMA_TUNE"    # A/B knob: "warps,kt" overrides ATTENTION_MMA
ATTENTION_GEMM_ENV = "EETJIT_ATTENTION_GEMM_MIN_ROWS"      # override (a huge number: never), for A/B measurements
ATTENTION_GEMM_MAX_BYTES = 128 << 20
ATTENTION_GEMM_MAX_BYTES_ENV = "EETJIT_ATTENTION_GEMM_MAX_MB"   # override, in MiB (A/B of memory against speed)
# The GEMM attention's softmax: rows of at most this many key columns go one warp per row, the row in registers
# (columns per lane = the power of two >= T / 32: one compiled variant per bucket); longer rows one block per row.
SOFTMAX_WARP_MAX_COLS = 2048
SOFTMAX_WARP_THREADS = {"gpu": 128, "sim": 8}          # rows per block = threads / lanes
SOFTMAX_LANES = {"gpu": 32, "sim": 4}                  # lanes per row: a warp (the simulator: a group of 4)
# GEMMs of at most this many rows (decode steps of small batches) run on a GEMV kernel (gemv_nk.py.j2, else
# gemv.py.j2) rather than cuBLASLt, whose launch and tail cost several microseconds over the time to read the weight
# at M = 1. The gemv.py.j2 tile:
# lanes x cpl adjacent columns, warps x rows_per_warp rows of K per block. Widths past GEMV_MAX_N (an LM head)
# stay with cuBLASLt.
# GPU: one row only. gemv_nk beat cuBLASLt at M = 1 on the H100 (B1 decode step 0.558 -> 0.484 ms) and lost at
# M = 8 (B8 0.595 -> 0.673); gemv.py.j2 lost at every M (benchmarks/gpu/NOTES.md). The simulator: off (tests force it)
GEMV_MAX_M = {"gpu": 1, "sim": 0}
GEMV_MAX_N = 16384
# ... except an LM head tied to the token embedding: up to GEMV_MAX_M rows (one on the GPU) gemv_nk reads the
# embedding's device table, which is already its [N, K] weight (no copy). H200, GPT-2 small (session 15): the head
# 24.5 us on cuBLASLt, 20.6 on gemv_nk (floor 18.7); B1 x 64 0.214 -> 0.206 ms/step. Both measured over a copy of the
# weight (session 7 had left the head on cuBLASLt for that 77 MB copy); the in-place read (session 16): 0.211-0.215 ->
# 0.208 ms/step. EETJIT_GEMV_TIED_HEAD=0 keeps it on cuBLASLt (A/B)
GEMV_TIED_HEAD_ENV = "EETJIT_GEMV_TIED_HEAD"
GEMV_MAX_N_ENV = "EETJIT_GEMV_MAX_N"    # override GEMV_MAX_N (A/B: the LM head on gemv_nk)
GEMV_ENV = "EETJIT_GEMV_MAX_M"          # override GEMV_MAX_M (0: every GEMM on cuBLASLt), for A/B measurements
FUSED_WRITE_ENV = "EETJIT_FUSED_KV_WRITE"  # "0": a one-token step writes its K/V column with kv_cache_write first
GEMV = {"gpu": dict(lanes=32, cpl=2, warps=8, rows_per_warp=8), "sim": dict(lanes=2, cpl=2, warps=2, rows_per_warp=2)}
# ... and with 16-byte weight loads (vec: each lane a vector of adjacent columns, cpl = the vector's width), when
# the weight's rows are whole vectors and 16-byte aligned, for at most GEMV_VEC_MAX_M rows (the block's shared sums
# are warps x rows x lanes x cpl floats); EETJIT_GEMV_VEC=0 keeps the scalar loads
GEMV_VEC = {"gpu": dict(lanes=32, warps=8, rows_per_warp=4), "sim": dict(lanes=2, warps=2, rows_per_warp=2)}
GEMV_VEC_MAX_M = 4
GEMV_VEC_ENV = "EETJIT_GEMV_VEC"
# ... or, first choice, gemv_nk.py.j2: a group of lanes per output column over a [N, K] copy of the weight (made on
# the first such call, kept by the Gemm), no split-K; for K of whole 16-byte vectors and a contiguous, aligned x
# (other one-row GEMMs go to cuBLASLt); EETJIT_GEMV_NK=0 runs gemv.py.j2 instead
GEMV_NK = {"gpu": dict(lanes=32, groups=4), "sim": dict(lanes=4, groups=2)}
GEMV_NK_ENV = "EETJIT_GEMV_NK"
GEMV_NK_TUNE_ENV = "EETJIT_GEMV_NK_TUNE"   # A/B knob: "lanes,groups" overrides GEMV_NK (benchmarks/gpu/ab_decode.sh)
# ... and past this many 16-byte vectors of the weight row per lane, a column takes twice the lanes (whole warps on the
# GPU, up to GEMV_NK_MAX_WIDEN times; their sums meet in shared memory), the block keeping its thread count. A lane's
# loads are all in flight before any arithmetic, so one warp a column held 25 vectors in 170 registers at K = 6400
# and spilled at K = 11008 (255 registers; widened: 96). Time on the H200 (bench_gemv.py --nk-vpl, session 14):
# neutral at GPT-2 small/medium/XL-size (the MLP down projections within 1-2%), B1 x 64 decode 0.220 either way
GEMV_NK_MAX_VPL = {"gpu": 8, "sim": 4}
GEMV_NK_MAX_WIDEN = 4
GEMV_NK_MAX_VPL_ENV = "EETJIT_GEMV_NK_MAX_VPL"
# ... and a group takes GEMV_NK_CPG_THIN adjacent columns (their weight loads all issued before the wait, x's row and
# its norm statistics taken once for them) where the lanes' last round of 16-byte vectors is thin (at most a quarter
# of the lanes), one otherwise. An empirical rule, not understood: H200, bench_gemv.py --rows 1 --nk-cpg (session
# 15), us a layer of 4 GEMVs at 1 / 2 columns a group: hidden 1600 (K = 1600 and 6400: a quarter of the lanes in the
# last round) 26.1 / 24.7, every GEMM faster (decode of the XL-size model 1.65 -> 1.56 ms/step); hidden 1200 (K =
# 1200, 4800: two thirds) 13.7 / 13.9; whole rounds (hidden 768, 1024, 1280, 2048) 1-10% slower at 2, and slower
# still at 3 or 4 (register growth: 60 -> 102 -> 131 -> 160 at K = 1600). Measured in float16 only; the rule applies
# to float32 too (4-value vectors: K = 1600 over 64 lanes), and only where a lane holds at most max_vpl vectors.
GEMV_NK_CPG_THIN = 2
GEMV_NK_MAX_CPG = 8         # the knob's limit: every column's loads are live in registers at once
GEMV_NK_CPG_ENV = "EETJIT_GEMV_NK_CPG"   # A/B knob: columns a group for every gemv_nk; 0 (default): the rule
# gemv_nk asks the memory system to bring the first GEMV_PREFETCH_MB MB of the weight of the GEMV that runs after it
# into L2 (bulk prefetches issued before its wait): the rows that GEMV's first blocks read. The order is learnt from
# the launches (the decode step's graph is captured after eager steps that ran the same GEMVs in the same order).
# H200, session 18: the one-row GEMVs of a layer read from L2 take 17.6 against 23.9 us at XL-size (bench_gemv.py
# --same), but prefetching the whole next weight lost (XL-size B1 1.568 -> 1.666 ms/step; at most 16 MB: 1.619):
# it fetches each byte twice when L2 cannot hold two GEMVs' weights. The first 2 MB (0.5 MB: the same) gained at
# every size, 2 rounds each: XL-size 1.568 -> 1.547, medium 0.436-0.441 -> 0.434, small 0.209 -> 0.207-0.208.
# Nor does more pay while attention runs, when HBM looks idle (session 24, B1 x 64 ms/step): the output projection's
# gemv_nk (resident during attention) asking for all of the up projection's weight (8 MB medium, 4.5 small; 2
# runs), medium 0.434-0.435 -> 0.443-0.445, small even; attention itself asking for all of it once its own loads
# are out (its blocks of the rows' first split, 4 KB pieces), medium 0.434 -> 0.497-0.501, small 0.202 -> 0.222.
# My reading: the traffic queued then delays the loads on the step's critical path (attention's, the output
# projection's).
# sm_90 and later only (the instruction); the simulator runs a twin that checks each piece's range.
GEMV_PREFETCH_ENV = "EETJIT_GEMV_PREFETCH"      # "0": no prefetch (A/B)
GEMV_PREFETCH_MB = 2.0
GEMV_PREFETCH_MB_ENV = "EETJIT_GEMV_PREFETCH_MB"
# ... or gemv_tc.py.j2 over the same [N, K] copy (half dtypes, up to 32 rows, no norm prologue): the tensor cores
# take the products (a lane's 16-byte load of the weight feeds two mma's, where gemv_nk converts and multiplies 16
# values in float32). Tile: ct tiles of 8 columns a block, warps splitting K, unroll chunks of 32 k in flight a warp.
# Off by default (EETJIT_GEMV_TC=1 puts it ahead of gemv_mma and gemv_nk for GEMMs without a norm prologue, any
# row count up to GEMV_TC_MAX_M): H200, bench_gemv.py (session 14), us a layer of 4 GEMMs at one row it does not
# beat gemv_nk (XL-size 28.2 at best against 26.3; small 9.5 against 8.2), while at 8 rows it beats gemv_mma and
# cuBLASLt on plain GEMMs (medium 11.9 against 16.8 / 18.8; small 10.2 against 11.9). Those rows' GEMMs all run
# inside NormLinear pairs (gemv_mma's folded prologue and statistics), which gemv_tc does not take yet. 16-32 rows
# (two 16-row A tiles a chunk) are not measured yet: bench_gemv.py --rows 16,32 --tc-tunes 2,8,2 1,8,2.
GEMV_TC = {"gpu": dict(ct=2, warps=8, unroll=4), "sim": dict(ct=1, warps=2, unroll=2)}
GEMV_TC_MAX_M = 32
GEMV_TC_ENV = "EETJIT_GEMV_TC"
GEMV_TC_TUNE_ENV = "EETJIT_GEMV_TC_TUNE"
# eet.NormLinear (eetjit.plan.norm_linear): gemv_nk computes the norm of its one row in a prologue, every lane group
# holding the row in registers (vectors per lane = K / 8 / lanes), up to this K; gemv_mma computes it for its rows
# where one block holds all of K (K <= warps x steps x 16: 768 with the GPU tile, 1536 at widths 769-1024 and
# 1664 past them with GEMV_MMA_WIDE's), up to GEMV_MMA_NORM_MAX_M rows; other rows run the norm kernel first.
# EETJIT_GEMV_NORM=0 always runs the norm kernel first (A/B measurements).
# H200, GPT-2 small decode: session 10's prologue gave B8 x 256 0.463 -> 0.452 ms/step but B32 x 512 0.698 -> 0.999
# (549 float conversions per lane at 32 rows); unpacking each word once (session 11, 134 of them) made B8
# 0.449 -> 0.384, while B32 still lost (replay 0.687 -> 0.742), so past one tile of 8 rows the norm kernel runs
# first (EETJIT_GEMV_MMA_NORM_MAX_M overrides).
GEMV_NORM_MAX_K = 2048
GEMV_NORM_ENV = "EETJIT_GEMV_NORM"
# gemv_nk's prologue in the folded form (where the weight is folded, below): the stored row multiplied as it is,
# the statistics (one pass) applied per output, rstd (x W' - mean colsum(W')) + b', as gemv_mma's fold. The
# normalize-and-round of every element by every lane group made the unfolded prologue ~4x the plain GEMV's
# instructions (1465 against 374 PTX at K = 1600, 128 registers against 60; folded: 672, 114). H200 (session 14),
# B1 x 64 ms/step: GPT-2 XL-size 1.899 -> 1.658, medium 0.533 -> 0.442, small replay 0.214 -> 0.207 (A/B, 2 rounds).
# EETJIT_GEMV_NK_FOLD=0: unfolded (A/B)
GEMV_NK_FOLD_ENV = "EETJIT_GEMV_NK_FOLD"
# float16/bfloat16 sessions where gemv_mma can run: each norm's gamma and beta folded into the Linears that read it
# (W' = diag(gamma) W, stored rounded; b' = beta W + b; eetjit.plan.norm_linear.fold_norm_affine on the session's
# graph, so Session.run and generation share one copy of each weight), so every path normalizes without the affine
# step (the norm kernel with gamma = 1, the GEMVs' prologues alike: no gamma or beta loads) and gemv_mma's prologue
# (gemv_nk's too, above) multiplies the raw rows and applies the norm per output: rstd (x W' - mean colsum(W')) +
# b'. gemv_mma's row statistics come from extra mma's over the same words, so nothing waits for them before the GEMM.
# H200, GPT-2 small decode replay (session 12): B1 x 64 0.229 -> 0.216 ms (gemv_nk's prologue loads no beta),
# B8 x 256 0.331 -> 0.316; at 32 rows the folded prologue still lost to the norm kernel first (0.640 -> 0.658), so
# GEMV_MMA_NORM_MAX_M bounds it too. EETJIT_NORM_FOLD=0 keeps gamma in the norm (A/B measurements).
NORM_FOLD_ENV = "EETJIT_NORM_FOLD"
# ... and where the norm's input is a residual sum made by a Linear (the attention output or MLP down projection;
# eetjit.plan.norm_linear.fold_producer_linear puts that Linear into the NormLinear), from this many rows on (up to
# gemv_mma's), gemv_mma runs the pair as two GEMMs and no norm kernel: the first adds the residual in its epilogue
# and writes each strip's row sums and sums of squares (rstats), the second reads them for its folded epilogue
# (pstats). H200, GPT-2 small decode (session 13), ms/step (replay): B32 x 512 0.636-0.639 (0.632) -> 0.583-0.589
# (0.580-0.582); B8 x 256, where the folded prologue took the norm, 0.325 (0.319) -> 0.300 (0.296).
# EETJIT_GEMV_MMA_STATS_MIN_M overrides the rows (a number past gemv_mma's rows: never, and no fold).
GEMV_MMA_STATS_MIN_M = {"gpu": 2, "sim": 2}
GEMV_MMA_STATS_ENV = "EETJIT_GEMV_MMA_STATS_MIN_M"
GEMV_MMA_NORM_MAX_M = {"gpu": 8, "sim": 8}
GEMV_MMA_NORM_ENV = "EETJIT_GEMV_MMA_NORM_MAX_M"
# Past gemv_max_m, up to GEMV_MMA_MAX_M rows (the decode step of a small batch), float16/bfloat16 GEMMs with K a
# multiple of 16 run on gemv_mma.py.j2: the tensor cores over the stored [K, N] weight (no copy), a warp per vw * 8
# columns x steps * 16 k, up to `warps` warps per block over adjacent k, the k ranges a block cannot take split over
# blocks (ksplit; the last block of a strip adds them). A lane reads its k segment of each x row in 16-byte loads
# issued together. H200, GPT-2 small's four projections x 12 layers as graphs (benchmarks/gpu/bench_gemv.py, a
# layer's GEMMs, session 10): cuBLASLt 20.0 / 20.7 / 20.9 us at M = 8 / 16 / 32, this tile 11.9 / 14.7 / 18.0
# (vw = 8: 13.0 / 16.4 / 24.6). EETJIT_GEMV_MMA_MAX_M overrides the rows (0: cuBLASLt);
# EETJIT_GEMV_MMA_TUNE="vw,warps,steps" the tile (A/B).
GEMV_MMA_MAX_M = {"gpu": 32, "sim": 0}
GEMV_MMA_ENV = "EETJIT_GEMV_MMA_MAX_M"
GEMV_MMA = {"gpu": dict(vw=4, warps=12, steps=4), "sim": dict(vw=2, warps=2, steps=1)}
GEMV_MMA_TUNE_ENV = "EETJIT_GEMV_MMA_TUNE"
# The tile was tuned at GPT-2 small's width. By the GEMM's width min(K, N) (a transformer layer's hidden size for
# each of its four projections), H200, session 20, 32 rows (bench_gemv.py, a layer's four GEMMs, us):
#   1024: cuBLASLt 24.5, this tile 29.0, steps = 8 21.4 (best of 8 tiles); GPT-2 medium B32 x 512 1.597 -> 1.423
#         ms/step with steps = 8 (cuBLASLt for all: 1.654). At GPT-2 small's 768, steps = 8 lost (0.593 -> 0.658).
#   1600: cuBLASLt 32.7, this tile 72.3, the best of 8 tiles 53.2: GPT-2 XL-size B32 x 512 6.11 -> 3.77 ms/step
#         with cuBLASLt (session 14 found the same order at 8 rows: 31.5 against 34.9).
#   Below 32 rows (session 21, decode B x 512, ms/step replay). GPT-2 medium, 8 k-steps from 17 rows / from 2
#   rows: B16 1.062 / 0.947, B8 0.827 / 0.724, B4 0.764 / 0.681, B2 0.717 / 0.630 (bench_gemv, session 20, a
#   layer's GEMMs at 1024 wide, 16 rows: tile 21.2, 8 steps 18.1; 8 rows 17.1 / 15.6). GPT-2 small (768 wide),
#   8 steps: B8 x 256 0.294 -> 0.327, B16 0.440 -> 0.462. GPT-2 XL-size (1600 wide), cuBLASLt from 17 / 9 / 2
#   rows: B16 3.457 / 3.211, B8 - / 2.570 / 2.786, B4 - / 2.198 / 2.612 (at 2-8 rows gemv_mma takes the norm
#   prologue, which cuBLASLt cannot; a layer's GEMMs alone at 8 rows: cuBLASLt 32.0 us, the tile 33.1).
# So gemv_mma runs `steps` k-steps a warp from `deep_min_m` rows at widths `deep_from`-`max_width` (where K is whole
# segments of them; else the tile; the norm prologue still fits, one block's k range covering 1024 wide; at 1600 wide 8
# steps with the tile's warps lost, session 20, 8 / 16 rows: 33.2 / 39.1 us -> 36.8 / 42.4), and from `cap_min_m` rows
# it does not run past `max_width`: cuBLASLt does, and where _pre_linear's two GEMMs would have handed the row
# statistics over, the producer Linear, the add-norm kernel and cuBLASLt run instead. Below cap_min_m rows, in one 8-row
# tile, gemv_mma runs past max_width too: with `steps` k-steps and up to `past_warps` warps where those hold all of K in
# one block (K up to 1664: at 1600 wide the tile splits K over 3 blocks, and one block is what the norm prologue needs),
# else with the tile. Session 21, a layer's GEMMs at 1600 wide, 8 rows, us (qkv, out, up, down): tile 8.91 / 4.08 /
# 10.17 / 9.93, 8 steps and 13 warps 8.13 / 3.24 / 9.51 / 11.28; 16 rows 39.1 -> 37.3 against cuBLASLt's 32.7. The warps
# are what the launch fits: at one 8-row tile ptxas gives 56-152 registers a thread by variant (the unfolded RMSNorm
# prologue the most: 13 warps of the unfolded prologues do not launch, GEMV_MMA_UNFOLDED_MAX_WARPS), at two tiles
# more, and at four 8 steps with 13 warps failed to launch (out of resources). tests/cuda/cuda_ptx_check.py checks
# the budget. Unmeasured between 1024 and 1600: the cap is the side measured to hold.
# EETJIT_GEMV_MMA_WIDE=0, or a tile given by EETJIT_GEMV_MMA_TUNE: the tile at every width and row count (A/B);
# assigning gemv_mma_tune alone (tests, bench_gemv.py) leaves the rule on.
GEMV_MMA_WIDE = {"gpu": dict(deep_min_m=2, deep_from=769, steps=8, cap_min_m=9, max_width=1024, past_warps=13),
                 "sim": None}
GEMV_MMA_WIDE_ENV = "EETJIT_GEMV_MMA_WIDE"
# The unfolded norm prologue (gamma not folded into the weight: EETJIT_NORM_FOLD=0, or a weight or gamma fed at run
# time) takes 144-148 registers at 1600 wide, and an SM's registers are four files of 16384, a block's warps dealt
# over them: 13 warps put 4 in one file, which cannot hold them (the launch failed on the H200, session 27), 12 put 3.
# Past this many warps gemv_mma leaves an unfolded norm to the norm kernel (the folded prologue fits 13).
GEMV_MMA_UNFOLDED_MAX_WARPS = 12
# the block's shared slots (each strip x (8-row tiles' rows + 1) float32) and, with a norm prologue, its per-warp row
# sums (2 x rows x warps float32, taken off before the slots are counted) must fit
GEMV_MMA_SMEM = 46 * 1024
# The LM head's vocabulary (or any odd GEMM width) is padded to a multiple of this: cuBLAS is several times
# slower on odd N (GPU.md), and the padded columns cost nothing to read back.
GEMM_N_ALIGN = 64
COPY_COLS_MAX_ROW_BLOCKS = 65535   # copy_cols's grid rows (CUDA's limit on gridDim.y); past it a block takes more rows
SCRATCH_SHAPES = 2              # shapes kept per op and scratch name (LRU): the prompt's and the decode step's
VIEW_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _env_flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off")


def _env_tune(name: str, default: dict) -> dict:
    """`default`, or the comma-separated integers of $name for its keys in order (an A/B knob)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return dict(default)
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(default):
        raise ValueError(f"{name}={text!r}: expected {len(default)} integers ({','.join(default)})")
    return dict(zip(default, values))


def nk_tune(tune: dict, K: int, per_load: int, max_vpl: int, cpg: int = 0) -> dict:
    """gemv_nk's lanes a column, columns a block and columns a group at depth K: `tune`'s, the lanes doubled (columns
    a block halved, down to one; at most GEMV_NK_MAX_WIDEN times) while a lane would read more than max_vpl 16-byte
    vectors of the weight row (per_load elements each); cpg columns a group, 0: GEMV_NK_CPG's rule."""
    t, widest = dict(tune), tune["lanes"] * GEMV_NK_MAX_WIDEN
    while -(-K // (per_load * t["lanes"])) > max_vpl and t["lanes"] < widest:
        t["lanes"] *= 2
        t["groups"] = max(1, t["groups"] // 2)
    nv = K // per_load
    # whole rounds of the lanes' vectors, then a last round of at most a quarter of the lanes
    thin = nv > t["lanes"] and 0 < nv % t["lanes"] <= t["lanes"] // 4
    t["cpg"] = cpg or (GEMV_NK_CPG_THIN if thin and -(-nv // t["lanes"]) <= max_vpl else 1)
    return t


def _table(rows, value):
    for limit, out in rows:
        if limit is None or value <= limit:
            return out
    raise AssertionError("unreachable")


class CudaBackend:
    """Numba CUDA kernels (templates/cuda) + cuBLASLt GEMMs for the fused ops of eetjit.fused (the contract)."""

    device = "cuda"
    target = "cuda"

    # the ExecutionPlan gives a split Linear's outputs one block, as column views (see _split_base)
    column_outputs = True
    # generation graphs fold each norm into the Linear that reads it (eetjit.plan.norm_linear): eet.NormLinear
    fold_norm_linear = True

    def __init__(self, dtype: str = "float32", verbose: bool = True, templates_dir=None):
        self.dev = get_device()
        self.dtype_name = dtype
        self.dtype = storage_dtype(dtype)
        self.cache_dtype = self.dtype
        self.verbose = verbose
        self.templates_dir = templates_dir
        self.mode = "sim" if self.dev.simulated else "gpu"
        self.attention_min_chunk = int(os.environ.get(ATTENTION_MIN_CHUNK_ENV, ATTENTION_MIN_CHUNK[self.mode]))
        if self.attention_min_chunk < 1:
            raise ValueError(f"{ATTENTION_MIN_CHUNK_ENV}={self.attention_min_chunk}: must be at least 1")
        self.attention_single_cols = ATTENTION_SINGLE_COLS[self.mode]
        self.attention_dynamic_splits = ATTENTION_DYNAMIC_SPLITS[self.mode]
        self.attention_blocks_per_sm = ATTENTION_BLOCKS_PER_SM[self.mode]
        self.attention_tile_min_rows = ATTENTION_TILE_MIN_ROWS[self.mode]
        self.attention_gemm_min_rows = int(os.environ.get(ATTENTION_GEMM_ENV, ATTENTION_GEMM_MIN_ROWS[self.mode]))
        self.attention_gemm_max_bytes = int(os.environ.get(ATTENTION_GEMM_MAX_BYTES_ENV, 0)) << 20 \
            or ATTENTION_GEMM_MAX_BYTES
        self.attention_gemm_chunk = None          # sequences per batch chunk (None: as many as the budget allows)
        self.attention_mma_min_rows = (ATTENTION_MMA_MIN_ROWS[self.mode] if _env_flag(ATTENTION_MMA_ENV)
                                       else float("inf"))
        self.attention_mma_tune = _env_tune(ATTENTION_MMA_TUNE_ENV, ATTENTION_MMA[self.mode])
        if self.attention_mma_tune["kt"] % 16 or self.attention_mma_tune["kt"] <= 0:
            raise ValueError(f"{ATTENTION_MMA_TUNE_ENV}: kt (key columns per tile) must be a positive multiple of 16")
        self._batched = BatchedGemm(self.dev)
        self._attn_scratch = _Scratch(self)      # shared by every attention op: they run one after another
        self._shared_scratch = _Scratch(self)    # likewise for the split Linears' GEMM block, norms, _pre_linear
        self._argmax_scratch = _Scratch(self)    # the greedy argmax's partials (greedy_tokens)
        self._index_memo = None                  # (host index array, its device copy): see _token_index
        self.gemv_max_m = int(os.environ.get(GEMV_ENV, GEMV_MAX_M[self.mode]))
        self.gemv_max_n = int(os.environ.get(GEMV_MAX_N_ENV, GEMV_MAX_N))
        self.gemv_tied_head = _env_flag(GEMV_TIED_HEAD_ENV)
        self.attention_fused_write = _env_flag(FUSED_WRITE_ENV)
        self.attention_vec = _env_flag(ATTENTION_VEC_ENV)
        self.attention_cluster = _env_flag(ATTENTION_CLUSTER_ENV) and self.dev.clusters
        self.attention_vec_tune = _env_tune(ATTENTION_VEC_TUNE_ENV, dict(
            threads=ATTENTION_VEC_THREADS[self.mode], unroll=ATTENTION_UNROLL[self.mode],
            unroll_many=ATTENTION_VEC_UNROLL_MANY[self.mode], blocks_per_sm=ATTENTION_VEC_BLOCKS_PER_SM[self.mode],
            pipeline=ATTENTION_VEC_PIPELINE[self.mode], unroll_few=ATTENTION_VEC_UNROLL_FEW[self.mode]))
        self.gemv_vec = _env_flag(GEMV_VEC_ENV)
        self.gemv_nk = _env_flag(GEMV_NK_ENV)
        self.gemv_nk_tune = _env_tune(GEMV_NK_TUNE_ENV, GEMV_NK[self.mode])
        self.gemv_nk_max_vpl = int(os.environ.get(GEMV_NK_MAX_VPL_ENV, GEMV_NK_MAX_VPL[self.mode]))
        self.gemv_nk_cpg = int(os.environ.get(GEMV_NK_CPG_ENV, 0))
        if not 0 <= self.gemv_nk_cpg <= GEMV_NK_MAX_CPG:
            raise ValueError(f"{GEMV_NK_CPG_ENV}={self.gemv_nk_cpg}: must be 0 (the rule) or a column count up to "
                             f"{GEMV_NK_MAX_CPG}")
        self.gemv_prefetch = _env_flag(GEMV_PREFETCH_ENV) and self.dev.bulk_prefetch     # sm_90+
        self.gemv_prefetch_bytes = float(os.environ.get(GEMV_PREFETCH_MB_ENV, GEMV_PREFETCH_MB)) * 2 ** 20
        if not self.gemv_prefetch_bytes > 0:
            raise ValueError(f"{GEMV_PREFETCH_MB_ENV}: must be a positive number of MB (off: {GEMV_PREFETCH_ENV}=0)")
        self._pf_last = None      # the weight of the last gemv_nk launch, and per weight the one launched after it
        self._pf_next: dict[int, tuple] = {}
        self.gemv_tc = _env_flag(GEMV_TC_ENV, "0")
        self.gemv_tc_tune = _env_tune(GEMV_TC_TUNE_ENV, GEMV_TC[self.mode])
        tc = self.gemv_tc_tune
        if tc["ct"] < 1 or not 1 <= tc["warps"] <= 32 or tc["unroll"] < 1:
            raise ValueError(f"{GEMV_TC_TUNE_ENV}={tc}: ct (tiles of 8 columns a block) and unroll must be at least 1, "
                             "warps 1..32")
        if self.gemv_nk_max_vpl < 1:
            raise ValueError(f"{GEMV_NK_MAX_VPL_ENV}={self.gemv_nk_max_vpl}: must be at least 1")
        self.gemv_norm = _env_flag(GEMV_NORM_ENV)
        self.gemv_nk_fold = _env_flag(GEMV_NK_FOLD_ENV)
        self.norm_fold = _env_flag(NORM_FOLD_ENV)
        self.gemv_mma_max_m = int(os.environ.get(GEMV_MMA_ENV, GEMV_MMA_MAX_M[self.mode]))
        self.gemv_mma_norm_max_m = int(os.environ.get(GEMV_MMA_NORM_ENV, GEMV_MMA_NORM_MAX_M[self.mode]))
        self.gemv_mma_stats_min_m = int(os.environ.get(GEMV_MMA_STATS_ENV, GEMV_MMA_STATS_MIN_M[self.mode]))
        self.gemv_mma_tune = _env_tune(GEMV_MMA_TUNE_ENV, GEMV_MMA[self.mode])
        tuned = bool(os.environ.get(GEMV_MMA_TUNE_ENV, "").strip())
        self.gemv_mma_wide = None if tuned or not _env_flag(GEMV_MMA_WIDE_ENV) else GEMV_MMA_WIDE[self.mode]
        mt = self.gemv_mma_tune
        if mt["vw"] not in (2, 4, 8) or not 1 <= mt["warps"] <= 32 or mt["steps"] < 1:
            raise ValueError(f"{GEMV_MMA_TUNE_ENV}={mt}: vw (weight columns per lane load) must be 2, 4 or 8, warps "
                             "1..32, steps at least 1")
        self.norm_threads = int(os.environ.get(NORM_THREADS_ENV, "0")) if not self.dev.simulated else 0
        self.argmax_tune = _env_tune(ARGMAX_TUNE_ENV, dict(threads=ARGMAX_THREADS[self.mode],
                                                           splits=ARGMAX_SPLITS[self.mode]))
        at = self.argmax_tune
        if (not self.dev.simulated and (at["threads"] % 32 or not 32 <= at["threads"] <= 1024)) \
                or not 1 <= at["splits"] <= at["threads"]:
            raise ValueError(f"{ARGMAX_TUNE_ENV}={at}: threads must be a multiple of 32 up to 1024 (on a GPU), "
                             "splits 1..threads")
        if self.norm_threads % 32 or not 0 <= self.norm_threads <= 1024:
            raise ValueError(f"{NORM_THREADS_ENV}={self.norm_threads}: threads per block must be a multiple of 32, "
                             "at most 1024 (0: the launch table)")
        self.per_load = 4 if self.dtype == np.float32 else 8      # storage elements in one 16-byte load
        self.host_roundtrips = 0      # fallback ops that had to copy device data to the host (not capturable)
        self._kernels: dict = {}
        self._consts: dict = {}       # (id(host array), dtype, how) -> (host array, device array)
        self._tables: list = []       # the token embedding tables (host) of prepared Embedding nodes (_tie_head)
        self._dummies: dict = {}

    # --- device memory (the ExecutionPlan and the generator allocate through these) ----------------------------
    def empty(self, shape, dtype=None):
        return self.dev.empty(tuple(int(s) for s in shape), self.dtype if dtype is None else dtype)

    def zeros(self, shape, dtype=None):
        return self.dev.zeros(tuple(int(s) for s in shape), self.dtype if dtype is None else dtype)

    def to_host(self, x):
        """A device (or host) array as a NumPy array; float16/bfloat16 come back as float32 (float16 widened on
        the device: a fraction of the host's time for it)."""
        if self.dev.on_device(x) and not self.dev.simulated and x.dtype == np.float16:
            with self.dev.stream:
                x = x.astype(np.float32)
        h = self.dev.to_host(x)
        if isinstance(h, np.ndarray) and (h.dtype == np.float16 or is_bfloat16(h.dtype)):
            h = h.astype(np.float32)
        return h

    def synchronize(self):
        self.dev.synchronize()

    @contextmanager
    def transient(self):
        """Within: the buffers handed to the ops are temporaries (an ExecutionPlan's first run of a signature),
        so no GEMM plan made for them is kept (a plan holds its operands alive)."""
        previous, self.dev.transient = self.dev.transient, True
        try:
            yield
        finally:
            self.dev.transient = previous

    # --- kernels ------------------------------------------------------------------------------------------------
    def kernel(self, op: str, seq_bucket: int | None = None, **consts):
        """The kernel of template `op` for these constants (and the device kind: GPU or simulator)."""
        consts["sim"] = self.dev.simulated
        if self.dev.pdl:
            consts["pdl"] = True       # launched with programmatic stream serialization (cuda_device.Device.pdl)
        memo = (op, seq_bucket, tuple(sorted(consts.items())))
        fn = self._kernels.get(memo)
        if fn is None:
            if self.dev.direct is not None:     # a GPU: cubins cached for the launch, else Numba (cuda_direct)
                fn = codegen.get_direct(op, consts, dtype=self.dtype, seq_bucket=seq_bucket, device=self.device,
                                        templates_dir=self.templates_dir)
            else:
                fn = codegen.get_kernel(op, consts, target=self.target, dtype=self.dtype, seq_bucket=seq_bucket,
                                        device=self.device, templates_dir=self.templates_dir)
            self._kernels[memo] = fn
        return fn

    def row_threads(self, width: int) -> int:
        return ROW_THREADS_SIM if self.dev.simulated else _table(ROW_THREADS_GPU, width)

    def elementwise_grid(self, total: int) -> int:
        threads = ELEMENTWISE_THREADS[self.mode]
        return max(1, min(-(-total // threads), self.dev.sm_count * ELEMENTWISE_BLOCKS_PER_SM[self.mode]))

    # --- nodes --------------------------------------------------------------------------------------------------
    def prepare(self, node: Node, graph: Graph | None = None, seq_lens: Iterable[int] = ()) -> PreparedOp:
        """Bind `node`: eet ops of the contract get kernels; any other node runs on the reference executor
        (on the host; view ops of device arrays stay views on the device)."""
        make = getattr(self, f"_prepare_{node.op_type}", None) if node.domain == "eet" else None
        if make is None:
            return PreparedOp(node, self._in_stream(self._fallback(node, graph)), fallback=True)
        return PreparedOp(node, self._in_stream(make(node)))

    def prepare_all(self, nodes: Iterable[Node], graph: Graph | None = None, seq_lens: Iterable[int] = (),
                    verbose: bool | None = None) -> list[PreparedOp]:
        nodes = list(nodes)
        verbose = self.verbose if verbose is None else verbose
        return [self.prepare(n, graph, seq_lens) for n in codegen.progress(nodes, verbose=verbose)]

    def _in_stream(self, run):
        stream = self.dev.stream
        if stream is None:
            return run

        def in_stream(inputs, out):
            with stream:
                return run(inputs, out)
        return in_stream

    # --- norms --------------------------------------------------------------------------------------------------
    def _prepare_LayerNorm(self, node):
        return self._norm(node, "layer_norm", float(node.attrs.get("epsilon", 1e-5)), add=False, has_beta=True)

    def _prepare_AddLayerNorm(self, node):
        return self._norm(node, "add_layer_norm", float(node.attrs.get("epsilon", 1e-5)), add=True, has_beta=True)

    def _prepare_RMSNorm(self, node):
        return self._norm(node, "rms_norm", float(node.attrs.get("epsilon", 1e-6)), add=False, has_beta=False)

    def _prepare_AddRMSNorm(self, node):
        return self._norm(node, "add_rms_norm", float(node.attrs.get("epsilon", 1e-6)), add=True, has_beta=False)

    def _norm(self, node, op, eps, add, has_beta):
        g = 2 if add else 1
        gamma = self._operand(node, g, np.float32)
        beta = self._operand(node, g + 1, np.float32) if has_beta else None
        consts = dict(epsilon=eps)
        if has_beta:
            consts["has_beta"] = node.input(g + 1) is not None

        def run(inputs, out):
            a = self._act(inputs[0])
            if add:
                b = self._act(inputs[1])
                shape = tuple(np.broadcast_shapes(a.shape, b.shape))
                if a.shape != shape:
                    a = self._contiguous(self.dev.xp.broadcast_to(a, shape))
            else:
                shape = a.shape
            E = shape[-1]
            N = math.prod(shape[:-1])
            a_NE = self._contiguous(a).reshape(N, E)
            threads = self.norm_threads or self.row_threads(E)
            kern = self.kernel(op, hidden=E, threads=threads, **consts)
            args = [a_NE]
            if add:
                args.append(self._rows(b, shape, E))
            args.append(_sized(gamma(inputs), E, node, "gamma"))
            if has_beta:
                bt = beta(inputs)
                args.append(self._dummy1() if bt is None else _sized(bt, E, node, "beta"))
            y = self._output(out, 0, shape)
            args.append(y.reshape(N, E))
            outs = [y]
            if add:
                s = self._output(out, 1, shape)
                args.append(s.reshape(N, E))
                outs.append(s)
            self.dev.launch(kern, N, threads, *args)
            return outs
        return run

    def _prepare_NormLinear(self, node):
        """eet.NormLinear: the norm node and the Linear node it was folded from (eetjit.plan.norm_linear), bound as
        usual, the Linear handed a _NormPrologue: one launch where the one-row GEMV computes the norm (a decode
        step), else the norm kernel into a shared scratch row block, then the GEMM. With the summand's own Linear
        (inputs W0, b0: fold_producer_linear), that Linear first (_pre_linear)."""
        kind, add = node.attrs["norm"], bool(node.attrs.get("add", 0))
        if kind not in ("layer", "rms"):
            raise InputError(f"node {node.name!r}: NormLinear norm {kind!r} is not 'layer' or 'rms'")
        a, b, gamma, beta, W, bias = (node.input(i) for i in range(6))
        eps = float(node.attrs.get("epsilon", 1e-5 if kind == "layer" else 1e-6))
        norm_op = ("Add" if add else "") + ("LayerNorm" if kind == "layer" else "RMSNorm")
        n_out = len(node.attrs.get("split") or []) or 1
        folded = self._fold_norm(node, kind, gamma, beta, W, bias)
        if folded is not None:
            gamma, beta, W, bias, colsum = folded
        norm_ins = [a] + ([b] if add else []) + [gamma] + ([beta] if kind == "layer" else [])
        norm_node = Node(norm_op, norm_ins, [], {"epsilon": eps}, "eet", f"{node.name}/norm")
        lin_attrs = {k: node.attrs[k] for k in ("activation", "split") if k in node.attrs}
        lin_node = Node("Linear", [a, W, bias], list(node.outputs[:n_out]), lin_attrs, "eet", f"{node.name}/linear")
        run_norm = getattr(self, f"_prepare_{norm_op}")(norm_node)
        run_linear = self._prepare_Linear(lin_node)
        if folded is None:
            gamma_of, beta_of = self._operand(node, 2, np.float32), self._operand(node, 3, np.float32)
            colsum_dev = None
        else:
            ones = self._upload_const(gamma.const, np.float32)
            gamma_of, beta_of = (lambda inputs: ones), (lambda inputs: None)

            def colsum_dev():
                return self._upload_const(colsum(), np.float32) if kind == "layer" else self._dummy1()
        has_beta = kind == "layer" and beta is not None

        def run_norm_linear(x, bx, inputs, out, s=None):
            g, bt = gamma_of(inputs), beta_of(inputs)
            shape = tuple(np.broadcast_shapes(x.shape, bx.shape)) if add else tuple(x.shape)
            if add and s is None:
                s = self._output(out, n_out, shape)
            norm_inputs = [x] + ([bx] if add else []) + [g] + ([bt] if kind == "layer" else [])
            pro = _NormPrologue(self, kind, add, eps, has_beta, x, bx, g, bt if has_beta else None, s, shape,
                                lambda y: run_norm(norm_inputs, [y, s] if add else [y]), colsum_dev)
            ys = run_linear([None, _input(inputs, 4), _input(inputs, 5)],
                            None if out is None else list(out[:n_out]), pro)
            return list(ys) + ([s] if add else [])

        if len(node.inputs) <= 6 or node.input(6) is None:
            def run(inputs, out):
                return run_norm_linear(self._act(inputs[0]), self._act(inputs[1]) if add else None, inputs, out)
            return run
        if not add:
            raise InputError(f"node {node.name!r}: NormLinear with the summand's Linear (W0) needs add = 1")
        return self._pre_linear(node, kind, eps, n_out, run_linear, run_norm_linear, gamma_of,
                                None if folded is None else colsum_dev)

    def _pre_linear(self, node, kind, eps, n_out, run_linear, run_norm_linear, gamma_of, colsum_dev):
        """A NormLinear with its summand's Linear (fold_producer_linear): sum = x0 W0 + b0 + residual. Where
        gemv_mma runs both GEMMs with the norm folded (_stats_path), the first adds the residual in its epilogue,
        stores the sum and writes the strips' row statistics, the second reads them: two launches, no norm
        kernel. Otherwise the Linear into a scratch block shared by every such op, then the NormLinear as usual."""
        pre_node = Node("Linear", [node.input(0), node.input(6), node.input(7)], [], {}, "eet", f"{node.name}/pre")
        run_pre = self._prepare_Linear(pre_node)
        scratch = _Scratch(self)

        def run(inputs, out):
            x0, r = self._act(inputs[0]), self._act(inputs[1])
            pre_inputs = [x0, _input(inputs, 6), _input(inputs, 7)]
            gemm0, E, _, _, bias0 = run_pre.gemm_for(pre_inputs)
            if x0.shape[-1] != gemm0.K:
                raise InputError(f"node {node.name!r}: NormLinear input has {x0.shape[-1]} features, W0 expects "
                                 f"{gemm0.K}")
            zshape = tuple(x0.shape[:-1]) + (E,)
            shape = tuple(np.broadcast_shapes(zshape, r.shape))
            M = math.prod(shape[:-1])
            s = self._output(out, n_out, shape)
            if colsum_dev is not None and zshape == shape == tuple(r.shape) and r.flags.c_contiguous:
                x0_MK = self._contiguous(x0).reshape(M, gemm0.K)
                gemm1, N1 = run_linear.gemm_for([None, _input(inputs, 4), _input(inputs, 5)])[:2]
                stats = self._stats_path(M, x0_MK, gemm0, E, scratch)
                pro = None if stats is None else _NormPrologue(self, kind, False, eps, False, s, None,
                                                               gamma_of(inputs), None, None, shape, None,
                                                               colsum_dev, stats=stats)
                # the second GEMM asks _gemv_takes too (run_linear): asking it here keeps the two in step
                if pro is not None and self._gemv_takes(pro, s.reshape(M, E), N1, gemm1.W_KN, gemm1.W_NK_tied):
                    self._gemv_mma(scratch, gemm0.W_KN, bias0, node.input(7) is not None, "none", x0_MK,
                                   s.reshape(M, E), None, (r.reshape(M, E), stats))
                    ys = run_linear([None, _input(inputs, 4), _input(inputs, 5)],
                                    None if out is None else list(out[:n_out]), pro)
                    return list(ys) + [s]
            z = self._shared_scratch.get("pre", zshape, self.dtype)     # one block for every such op (a prompt's)
            run_pre(pre_inputs, [z])
            return run_norm_linear(z, r, inputs, out, s)
        return run

    def _stats_path(self, M, x0_MK, gemm0, E, scratch):
        """The row-statistics scratch [strips, M, 2] where _pre_linear's first GEMM can write them at M rows (from
        gemv_mma_stats_min_m rows, gemv_mma fitting it, strips of at most 32 columns: one warp's shuffles add a
        strip's row), else None. Whether the second GEMM reads them is _gemv_takes's call."""
        vw = self.gemv_mma_tune["vw"]
        if not (M >= self.gemv_mma_stats_min_m and M > self.gemv_max_m and 8 * vw <= 32
                and self._mma_fits(x0_MK, E, gemm0.W_KN)):
            return None
        return scratch.get("stats", (-(-E // (8 * vw)), M, 2), np.float32)

    @property
    def fold_norm_affine(self) -> bool:
        """Whether sessions fold each norm's gamma and beta into the Linears that read it (eetjit.plan.norm_linear
        .fold_norm_affine, on the session's graph) and NormLinear takes the folded form (NORM_FOLD_ENV)."""
        return bool(self.norm_fold and self.dtype != np.float32 and self.gemv_mma_max_m > 0 and self.dev.mma_sync)

    @property
    def fold_producer_linear(self) -> bool:
        """Whether generation graphs fold a residual sum's Linear into the NormLinear that reads the sum
        (eetjit.plan.norm_linear.fold_producer_linear): where gemv_mma can hand the row statistics over."""
        return (self.fold_norm_affine and self.gemv_norm and self.gemv_mma_tune["vw"] <= 4
                and self.gemv_mma_stats_min_m <= self.gemv_mma_max_m)

    def _fold_norm(self, node, kind, gamma, beta, W, bias):
        """(gamma, beta, W, bias, colsum) of a NormLinear in the folded form (gamma = 1, no beta, W' = diag(gamma)
        W, b' = beta W + b), colsum() the column sums of W' rounded to the storage type (float32; computed on
        first use). A session's graph comes folded (fold_norm_affine): its operands are used as they are. A node
        with its own gamma/beta gets a folded copy of its weight. None where it does not apply (float32, no
        gemv_mma, an operand fed at run time, shapes that do not match)."""
        if not self.fold_norm_affine:
            return None
        if any(v is not None and not v.is_const for v in (gamma, beta, W, bias)) or gamma is None or W is None:
            return None
        if np.ndim(W.const) != 2 or np.size(gamma.const) != np.shape(W.const)[0]:
            return None
        K, N = np.shape(W.const)
        has_beta = kind == "layer" and beta is not None
        if (has_beta and np.size(beta.const) != K) or (bias is not None and np.size(bias.const) != N):
            return None
        if not has_beta and np.all(np.asarray(gamma.const) == 1):
            folded = (gamma, None, W, bias)                     # already folded (the session's graph)
        else:
            Wf, b = folded_weights(gamma.const, beta.const if has_beta else None, W.const,
                                   None if bias is None else bias.const)

            def const(name, arr):
                return Value(f"{node.name}/{name}", arr.dtype, arr.shape, const=arr)
            folded = (const("ones", np.ones(K, np.float32)), None, const("W_folded", Wf),
                      None if b is None else const("b_folded", b))
        W_f = folded[2]
        memo = []

        def colsum():
            # the values the GEMM multiplies: rounded once to the storage type, as the upload does (a session's
            # graph stores them so already; computed only for a NormLinear whose rows reach a folded prologue)
            if not memo:
                w = W_f.const if W_f.const.dtype == self.dtype else np.asarray(W_f.const, np.float32).astype(self.dtype)
                memo.append(w.sum(axis=0, dtype=np.float32))
            return memo[0]
        return folded + (colsum,)

    # --- GEMM + epilogue ----------------------------------------------------------------------------------------
    def _prepare_Linear(self, node):
        """run(inputs, out, prologue=None): with a _NormPrologue (eet.NormLinear), x is the norm of the
        prologue's inputs, computed inside the one-row GEMV where it can, else by the norm kernel first."""
        act = node.attrs.get("activation", "none")
        if isinstance(act, bytes):
            act = act.decode()
        if act not in ACTIVATIONS:
            raise InputError(f"node {node.name!r}: Linear activation {act!r} is not one of {ACTIVATIONS}")
        split = [int(n) for n in (node.attrs.get("split") or [])]
        has_bias = node.input(2) is not None
        const_w = node.input(1).is_const and (not has_bias or node.input(2).is_const)
        scratch = _Scratch(self)
        gemms: dict = {}

        def gemm_for(inputs):
            """(Gemm, N, N_padded, epilogue) for this node's weight (built once when the weight is a constant)."""
            if "g" in gemms:
                return gemms["g"]
            W = node.input(1).const if node.input(1).is_const else self.dev.to_host(inputs[1])
            K, N = np.shape(W)
            if split and sum(split) != N:
                raise InputError(f"node {node.name!r}: Linear split {split} does not add up to N={N}")
            Np = N if split or N % GEMM_N_ALIGN == 0 else -(-N // GEMM_N_ALIGN) * GEMM_N_ALIGN
            bias = None
            if has_bias:
                bias = node.input(2).const if node.input(2).is_const else self.dev.to_host(inputs[2])
                if np.size(bias) != N:
                    raise InputError(f"node {node.name!r}: bias must have {N} values, got {np.size(bias)}")
            def upload_input(a, dtype, how="", f=None, pad_cols=None):   # a weight fed at run time
                host = f(np.asarray(a)) if f else np.asarray(a)
                return self.dev.upload(host if pad_cols is None else _pad_cols(host, pad_cols), dtype)
            upload = self._upload_const if const_w else upload_input
            W_dev = upload(W, self.dtype, "pad", pad_cols=Np)
            b_gemm = None if bias is None else upload(bias, self.dtype, "pad", lambda v: v.reshape(-1), pad_cols=Np)
            gemm = Gemm(self.dev, W_dev, b_gemm, act)
            if const_w and not split and N > self.gemv_max_n:
                self._tie_head(gemm, W)
            epi_bias = has_bias and not gemm.fused_bias
            epi_act = "none" if gemm.fused_activation else act
            epilogue = None
            if epi_bias or epi_act != "none":
                epilogue = (self.kernel("linear_epilogue", width=N, activation=epi_act, has_bias=epi_bias,
                                        threads=ELEMENTWISE_THREADS[self.mode], unroll=EPILOGUE_UNROLL[self.mode]),
                            upload(bias, np.float32, "flat", lambda v: v.reshape(-1)) if epi_bias
                            else self._dummy1())
            gemv_bias = upload(bias, np.float32, "flat", lambda v: v.reshape(-1)) if has_bias else self._dummy1()
            entry = (gemm, N, Np, epilogue, gemv_bias)
            if const_w:
                gemms["g"] = entry
            return entry

        if const_w:
            gemm_for([])

        def run(inputs, out, prologue=None):
            gemm, N, Np, epilogue, gemv_bias = gemm_for(inputs)
            x = self._act(inputs[0]) if prologue is None else prologue.a
            if x.shape[-1] != gemm.K:
                raise InputError(f"node {node.name!r}: Linear input has {x.shape[-1]} features, the weight "
                                 f"expects {gemm.K}")
            lead = x.shape[:-1]
            M = math.prod(lead)
            x_MK = self._contiguous(x).reshape(M, gemm.K)
            if prologue is not None and not self._gemv_takes(prologue, x_MK, N, gemm.W_KN, gemm.W_NK_tied):
                x_MK, prologue = prologue.normed().reshape(M, gemm.K), None      # the norm kernel first
            if split:
                base = _split_base(out, M, N, split)
                if base is None and out is not None:
                    # separate output buffers (a planned run): one [M, N] block shared by every split Linear, so
                    # its GEMM plan stays valid from run to run (a fresh block per run would be re-planned and
                    # kept alive by its plan), then copied out
                    base = self._shared_scratch.get("split", (M, N), self.dtype)
                elif base is None:
                    base = self.empty((M, N))          # first run: the outputs are views of a new block
                if not self._gemv(scratch, gemm, gemv_bias, has_bias, act, x_MK, base, prologue):
                    gemm(x_MK, base)
                    self._epilogue(epilogue, base)
                views, o = [], 0
                for n in split:
                    views.append(base[:, o:o + n].reshape(lead + (n,)))
                    o += n
                if out is not None and all(v is not None for v in out[:len(split)]):
                    for v, dst in zip(views, out):
                        if _ptr(v) != _ptr(dst):
                            self._check_out(dst, v.shape)
                            self.dev.copy(dst, v)
                    return list(out[:len(split)])
                return views
            y = self._output(out, 0, lead + (N,))
            y_MN = y.reshape(M, N)
            if self._gemv(scratch, gemm, gemv_bias, has_bias, act, x_MK, y_MN, prologue):
                return [y]
            if Np != N:
                y_pad = scratch.get("pad", (M, Np), self.dtype)
                gemm(x_MK, y_pad)
                self._copy_cols(y_MN, y_pad)
            else:
                gemm(x_MK, y_MN)
            self._epilogue(epilogue, y_MN)
            return [y]
        run.gemm_for = gemm_for        # (Gemm, N, N padded, epilogue, GEMV bias): NormLinear's _pre_linear
        return run

    def _gemv(self, scratch, gemm, bias_N, has_bias, act, x_MK, y_MN, prologue=None) -> bool:
        """y = act(x @ W[:, :N] + bias) by a GEMV kernel when x has few rows (a decode step): one launch, bias and
        activation applied in it. Past gemv_max_m rows, gemv_mma.py.j2 where it fits (_mma_fits). Up to it,
        gemv_nk.py.j2 where it can run; where it cannot (K not whole 16-byte vectors, x strided or unaligned),
        cuBLASLt, which beat gemv.py.j2 (run only with EETJIT_GEMV_NK=0, for A/B). False (nothing done) when
        cuBLASLt should. With a prologue (only where _gemv_takes it; x_MK is then the norm's
        input a), gemv_nk or gemv_mma computes the norm too. With EETJIT_GEMV_TC=1, a GEMM without a prologue
        goes to gemv_tc.py.j2 first where it runs (_tc_fits)."""
        M, K = x_MK.shape
        N = y_MN.shape[1]
        if prologue is None and self._tc_fits(x_MK, N):
            t = self.gemv_tc_tune
            kern = self.kernel("gemv_tc", m_rows=M, k=K, n=N, activation=act, has_bias=has_bias, **t)
            self.dev.launch(kern, -(-N // (8 * t["ct"])), 32 * t["warps"], x_MK, self._w_nk(gemm, N, K), bias_N,
                            y_MN)
            return True
        if M > self.gemv_max_m and self._mma_fits(x_MK, N, gemm.W_KN):
            self._gemv_mma(scratch, gemm.W_KN, bias_N, has_bias, act, x_MK, y_MN, prologue)
            return True
        if not (0 < M <= self.gemv_max_m and (N <= self.gemv_max_n or gemm.W_NK_tied)):
            return False
        W_KN = gemm.W_KN
        if self._nk_fits(x_MK, N, gemm.W_NK_tied):
            t = self._nk_tune(K)
            extra, args = ({}, ()) if prologue is None else prologue.gemv_args(M, K, fold=self.gemv_nk_fold)
            w_NK = self._w_nk(gemm, N, K)
            pf_extra, pf_args = self._prefetch_after(w_NK)
            kern = self.kernel("gemv_nk", m_rows=M, k=K, n=N, activation=act, has_bias=has_bias, **extra, **t,
                               **pf_extra)
            self.dev.launch(kern, -(-N // (t["groups"] * t["cpg"])), t["lanes"] * t["groups"], x_MK, w_NK, bias_N,
                            y_MN, *args, *pf_args)
            return True
        if self.gemv_nk or N > self.gemv_max_n:
            return False
        vec = (self.gemv_vec and M <= GEMV_VEC_MAX_M and N % self.per_load == 0
               and W_KN.shape[1] % self.per_load == 0 and W_KN.flags.c_contiguous
               and (self.dev.simulated or _ptr(W_KN) % 16 == 0))
        t = dict(GEMV_VEC[self.mode], cpl=self.per_load) if vec else GEMV[self.mode]
        tn, kc = t["lanes"] * t["cpl"], t["warps"] * t["rows_per_warp"]
        tiles, ksplit = -(-N // tn), -(-K // kc)
        kern = self.kernel("gemv", m_rows=M, k=K, n=N, ksplit=ksplit, activation=act, has_bias=has_bias, vec=vec,
                           **t)
        if ksplit > 1:
            part = scratch.get("gemv_part", (ksplit, M, tiles * tn), np.float32)
            count = scratch.get("gemv_count", (tiles,), np.int32, zeros=True)    # reset by each tile's last block
        else:
            part, count = self._dummy("f3", (1, 1, 1), np.float32), self._dummy("c1", (1,), np.int32)
        self.dev.launch(kern, (tiles, ksplit), t["lanes"] * t["warps"], x_MK, W_KN, bias_N, y_MN, part, count)
        return True

    def _prefetch_after(self, w_NK) -> tuple[dict, tuple]:
        """gemv_nk's prefetch constant and argument for a launch reading w_NK (nothing with EETJIT_GEMV_PREFETCH=0):
        the first rows, up to gemv_prefetch_bytes, of the weight launched after w_NK the last time it ran (a 16-byte
        dummy the first time). Records w_NK as the successor of the previous launch's weight."""
        if not self.gemv_prefetch:
            return {}, ()
        last, self._pf_last = self._pf_last, w_NK
        if last is not None and last is not w_NK:
            self._pf_next[id(last)] = (last, w_NK)
        seen = self._pf_next.get(id(w_NK))
        nxt = seen[1] if seen is not None and seen[0] is w_NK else None
        if nxt is None or nxt.dtype != w_NK.dtype or not nxt.flags.c_contiguous:
            nxt = self._dummy("pf", (1, 16 // w_NK.dtype.itemsize), w_NK.dtype)
        elif nxt.nbytes > self.gemv_prefetch_bytes:
            nxt = nxt[:max(1, int(self.gemv_prefetch_bytes // (nxt.shape[1] * nxt.dtype.itemsize)))]
        self.dev.keep(nxt)        # a captured step keeps what its launches point at
        return {"prefetch": True}, (nxt,)

    def _mma_fits(self, x_MK, N, W_KN) -> bool:
        """Whether gemv_mma.py.j2 runs y[M, N] = x @ W: a card with mma.sync (sm_80+), a half dtype, M up to
        gemv_mma_max_m and one shared slot of its rows fitting GEMV_MMA_SMEM, N up to gemv_max_n, not too wide
        for its rows (GEMV_MMA_WIDE), K a positive multiple of 16 and of a lane's k segment (4 steps of the tile's
        _mma_tile), x contiguous and 16-byte aligned (a lane reads its segment of a row in 16-byte loads), W's
        stored rows whole aligned loads of vw."""
        M, K = x_MK.shape
        vw, steps = self.gemv_mma_tune["vw"], self._mma_tile(M, K, N)["steps"]
        return (0 < M <= self.gemv_mma_max_m and N <= self.gemv_max_n and self.dtype != np.float32
                and not self._mma_too_wide(M, K, N)
                and self.dev.mma_sync and _mma_slot_bytes(M, vw) <= GEMV_MMA_SMEM
                and K > 0 and K % 16 == 0 and K % (4 * steps) == 0 and x_MK.flags.c_contiguous
                and W_KN.flags.c_contiguous and W_KN.shape[1] % vw == 0 and W_KN.shape[1] >= N
                and (self.dev.simulated or (_ptr(x_MK) % 16 == 0 and _ptr(W_KN) % (2 * vw) == 0)))

    def _mma_tile(self, M, K, N) -> dict:
        """gemv_mma's tile (vw, warps, steps) for y[M, N] = x[M, K] @ W: gemv_mma_tune, with GEMV_MMA_WIDE's steps
        from its deep_min_m rows at widths min(K, N) from deep_from, where K is whole k segments of them (4 steps of
        16 a lane): up to max_width with the tile's warps; past it, below cap_min_m rows in one 8-row tile, with
        past_warps where those hold all of K in one block (the launch fits no more registers)."""
        wide = self.gemv_mma_wide
        if not (wide and M >= wide["deep_min_m"] and min(K, N) >= wide["deep_from"] and K % (4 * wide["steps"]) == 0):
            return self.gemv_mma_tune
        if min(K, N) <= wide["max_width"]:
            return dict(self.gemv_mma_tune, steps=wide["steps"])
        if M <= 8 and M < wide["cap_min_m"] and K <= 16 * wide["steps"] * wide["past_warps"]:
            return dict(self.gemv_mma_tune, steps=wide["steps"], warps=wide["past_warps"])
        return self.gemv_mma_tune

    def _mma_too_wide(self, M, K, N) -> bool:
        """Whether cuBLASLt runs y[M, N] = x[M, K] @ W instead of gemv_mma: GEMV_MMA_WIDE's cap_min_m rows, past
        its width."""
        wide = self.gemv_mma_wide
        return bool(wide and M >= wide["cap_min_m"] and min(K, N) > wide["max_width"])

    def _mma_ksplit(self, M, K, N) -> tuple[int, int]:
        """gemv_mma's (k ranges over blocks, warps per block) for K: warps x steps x 16 k a block at most (the
        tile of _mma_tile(M, K, N))."""
        tile = self._mma_tile(M, K, N)
        warps, steps = tile["warps"], tile["steps"]
        ksteps = K // 16
        ksplit = -(-ksteps // (warps * steps))
        return ksplit, -(-ksteps // (ksplit * steps))

    def _gemv_mma(self, scratch, W_KN, bias_N, has_bias, act, x_MK, y_MN, prologue=None, residual=None) -> None:
        """gemv_mma.py.j2: a block of at most `warps` warps per strip of 8 vw columns over k ranges of warps x steps x
        16 (fewer warps where fewer cover K), ksplit blocks per strip where one does not; the warps' tiles meet in
        as many shared slots as GEMV_MMA_SMEM holds (in rounds when there are more warps). With a norm prologue
        (one k range: _gemv_takes), x_MK is the norm's input and the kernel normalizes its rows itself; with its
        row statistics from memory (prologue.stats), any k ranges. residual = (r_MN, stats_PM2): y = act(x W +
        bias) + r, and the strips' row sums and sums of squares of the stored y into stats_PM2 (_pre_linear)."""
        M, K = x_MK.shape
        N = y_MN.shape[1]
        vw, steps = self.gemv_mma_tune["vw"], self._mma_tile(M, K, N)["steps"]
        strip = 8 * vw
        ksplit, warps = self._mma_ksplit(M, K, N)
        mtiles = -(-M // 8)
        # the prologue's per-warp row sums (and, folded, each row's mean and 1 / std)
        stats = 0 if prologue is None else (2 * 8 * mtiles * warps + 2 * 8 * mtiles) * 4
        if prologue is not None and prologue.stats is not None:
            stats = 2 * 8 * mtiles * 4
        slots = max(1, min(warps, (GEMV_MMA_SMEM - stats) // _mma_slot_bytes(M, vw)))
        tiles = -(-N // strip)
        extra, args = ({}, ()) if prologue is None else prologue.gemv_args(M, K, mma=True)
        if residual is not None:
            extra, args = dict(rstats=True), tuple(residual)
        # one kernel per 8 rows of x (tiles of mma's n), M read from x: batches of 1-8 rows share theirs
        kern = self.kernel("gemv_mma", mtiles=mtiles, k=K, n=N, ksplit=ksplit, activation=act,
                           has_bias=has_bias, vw=vw, warps=warps, steps=steps, slots=slots, **extra)
        if ksplit > 1:
            part = scratch.get("mma_part", (ksplit, M, tiles * strip), np.float32)
            count = scratch.get("mma_count", (tiles,), np.int32, zeros=True)    # reset by each strip's last block
        else:
            part, count = self._dummy("f3", (1, 1, 1), np.float32), self._dummy("c1", (1,), np.int32)
        self.dev.launch(kern, (tiles, ksplit), 32 * warps, x_MK, W_KN, bias_N, y_MN, part, count, *args)

    def _nk_tune(self, K) -> dict:
        return nk_tune(self.gemv_nk_tune, K, self.per_load, self.gemv_nk_max_vpl, self.gemv_nk_cpg)

    def _tie_head(self, gemm, W_KN) -> None:
        """Point a wide GEMM's W_NK at the device table of a prepared token embedding when W is that table
        transposed (an LM head tied to it, values compared: plan.structure.tied_to_embedding), so that one-row
        GEMVs read it in place; nothing when EETJIT_GEMV_TIED_HEAD=0 or no table matches."""
        if not self.gemv_tied_head or np.ndim(W_KN) != 2:
            return
        for table in self._tables:
            if np.shape(table) == np.shape(W_KN)[::-1] and tied_to_embedding(np.asarray(W_KN), table):
                gemm.W_NK, gemm.W_NK_tied = self._upload_const(table, self.dtype), True
                return

    def _w_nk(self, gemm, N, K):
        """The [N, K] copy of the GEMM's weight that gemv_nk and gemv_tc read: made on the first call (N is the
        node's unpadded width, the same every run) and kept by the Gemm."""
        if gemm.W_NK is None:
            if self.dev.capturing:
                raise CaptureError("the GEMV's [N, K] weight copy was made while capturing a CUDA graph")
            gemm.W_NK = self.dev.empty((N, K), self.dtype)
            self.dev.copy(gemm.W_NK, gemm.W_KN[:, :N].T)
            # gemv_nk and gemv_tc read the copy before their programmatic-launch wait, and the copy kernel queued
            # just before them may not have finished there: wait for it (once per weight, never in a capture)
            self.dev.synchronize()
        return gemm.W_NK

    def _tc_fits(self, x_MK, N) -> bool:
        """Whether gemv_tc.py.j2 runs y[M, N] = x @ W (only with EETJIT_GEMV_TC=1, ahead of gemv_mma and gemv_nk): a
        card with mma.sync, a half dtype, 1..GEMV_TC_MAX_M rows, N up to gemv_max_n, K whole 16-byte vectors, x
        contiguous and aligned."""
        M, K = x_MK.shape
        return (self.gemv_tc and self.dev.mma_sync and self.dtype != np.float32 and 0 < M <= GEMV_TC_MAX_M
                and N <= self.gemv_max_n and K > 0 and self._rows_of_vectors(x_MK))

    def _rows_of_vectors(self, x_MK) -> bool:
        """Whether x's rows are whole 16-byte vectors, contiguous and aligned (what gemv_nk and gemv_tc load)."""
        return (x_MK.shape[1] % self.per_load == 0 and x_MK.flags.c_contiguous
                and (self.dev.simulated or _ptr(x_MK) % 16 == 0))

    def _nk_fits(self, x_MK, N, tied_head=False) -> bool:
        """Whether gemv_nk.py.j2 runs y[M, N] = x @ W: a GEMV row count and width (any width for an LM head tied to
        the token embedding), K of whole 16-byte vectors, x contiguous and aligned."""
        M = x_MK.shape[0]
        return (0 < M <= self.gemv_max_m and (N <= self.gemv_max_n or tied_head) and self.gemv_nk
                and self._rows_of_vectors(x_MK))

    def _gemv_takes(self, prologue, x_MK, N, W_KN, tied_head=False) -> bool:
        """Whether a GEMV computes this norm prologue itself, every operand of the norm contiguous and aligned:
        gemv_nk where it runs, K up to GEMV_NORM_MAX_K (each lane group holds the row in registers); gemv_mma
        where it runs with one k range (a block holds all of K, so it can take the rows' statistics), up to
        gemv_mma_norm_max_m rows; with the statistics from memory (prologue.stats, _pre_linear) gemv_mma
        wherever it runs."""
        M, K = x_MK.shape
        if not (self.gemv_norm and prologue.fits(M, K, self.dev.simulated)):
            return False
        if prologue.stats is not None:
            # the statistics from memory (_pre_linear): any k ranges; the block needs a lane per row of its tiles
            return (M > self.gemv_max_m and prologue.colsum is not None and self._mma_fits(x_MK, N, W_KN)
                    and 8 * -(-M // 8) <= 32 * self._mma_ksplit(M, K, N)[1])
        if M > self.gemv_max_m:
            ksplit, warps = self._mma_ksplit(M, K, N)
            return (M <= self.gemv_mma_norm_max_m and self._mma_fits(x_MK, N, W_KN) and ksplit == 1
                    and (prologue.colsum is not None or warps <= GEMV_MMA_UNFOLDED_MAX_WARPS))
        return K <= GEMV_NORM_MAX_K and self._nk_fits(x_MK, N, tied_head)

    def _copy_cols(self, y_MN, x_MP) -> None:
        """y[M, N] = x[:, :N] (a GEMM's padded result into the node's contiguous output) by copy_cols.py.j2, a block
        per 1024 columns of a row, more rows a block past COPY_COLS_MAX_ROW_BLOCKS (an LM head's 32 x 50257 logits:
        CuPy's strided copy took 8.9 us of a B32 decode step on the H200, this kernel 4.3; session 25)."""
        M, N = y_MN.shape
        threads, unroll = ELEMENTWISE_THREADS[self.mode], EPILOGUE_UNROLL[self.mode]
        kern = self.kernel("copy_cols", width=N, threads=threads, unroll=unroll)
        self.dev.launch(kern, (-(-N // (threads * unroll)), min(M, COPY_COLS_MAX_ROW_BLOCKS)), threads, x_MP, y_MN)

    def _epilogue(self, epilogue, y_MN):
        if epilogue is None or y_MN.size == 0:
            return
        kern, bias = epilogue
        M = y_MN.shape[0]
        blocks = max(1, min(M, self.dev.sm_count * ELEMENTWISE_BLOCKS_PER_SM[self.mode]))
        self.dev.launch(kern, blocks, ELEMENTWISE_THREADS[self.mode], y_MN, bias)

    def _prepare_SwiGLU(self, node):
        # One GEMM against [W_gate | W_up] (concatenated once, here), then the SwiGLU epilogue kernel.
        if not (node.input(1).is_const and node.input(2).is_const):
            raise InputError(f"node {node.name!r}: SwiGLU weights must be constants on the CUDA backend")
        Wg, Wu = node.input(1).const, node.input(2).const
        W_dev = self._upload_const(Wg, self.dtype, f"swiglu-{id(Wu)}",       # [W_gate | W_up]
                                   lambda w: np.concatenate([w, np.asarray(Wu)], axis=1))
        K, F = Wg.shape
        gemm = Gemm(self.dev, W_dev, None, "none")
        gemm.fused_bias = gemm.fused_activation = True     # nothing for the GEMM to apply: the kernel does it
        b_gate, b_up = self._operand(node, 3, np.float32), self._operand(node, 4, np.float32)
        has_gate_bias, has_up_bias = node.input(3) is not None, node.input(4) is not None
        kern = self.kernel("swiglu_epilogue", width=F, has_gate_bias=has_gate_bias, has_up_bias=has_up_bias)
        scratch = _Scratch(self)

        def run(inputs, out):
            x = self._act(inputs[0])
            lead = x.shape[:-1]
            M = math.prod(lead)
            x_MK = self._contiguous(x).reshape(M, K)
            gu_M2F = scratch.get("gu", (M, 2 * F), self.dtype)
            gemm(x_MK, gu_M2F)
            y = self._output(out, 0, lead + (F,))
            bg = _sized(b_gate(inputs), F, node, "b_gate") if has_gate_bias else self._dummy1()
            bu = _sized(b_up(inputs), F, node, "b_up") if has_up_bias else self._dummy1()
            self.dev.launch(kern, self.elementwise_grid(M * F), ELEMENTWISE_THREADS[self.mode], gu_M2F, bg, bu,
                            y.reshape(M, F))
            return [y]
        return run

    # --- embedding, rotary, last token ---------------------------------------------------------------------------
    def _prepare_Embedding(self, node):
        wte, wpe, wtt = (self._operand(node, i) for i in (2, 3, 5))
        if node.input(2) is not None and node.inputs[2].is_const:      # for an LM head tied to it (_tie_head)
            table = node.inputs[2].const      # _consts (uploaded above) holds it as long as the backend lives
            if not any(t is table for t in self._tables):
                self._tables.append(table)
        gamma, beta = self._operand(node, 6, np.float32), self._operand(node, 7, np.float32)
        consts = dict(has_positions=node.input(3) is not None, has_token_types=node.input(5) is not None,
                      has_norm=node.input(6) is not None, has_beta=node.input(7) is not None,
                      epsilon=float(node.attrs.get("epsilon", 1e-5)))

        def run(inputs, out):
            raw = inputs[0]
            if np.ndim(raw) != 2:
                raise InputError(f"node {node.name!r}: token ids must be [batch, sequence], got shape "
                                 f"{list(np.shape(raw))}")
            B, S = raw.shape
            wte_VE = wte(inputs)
            V, E = wte_VE.shape
            if self.dev.host_readable(raw):
                _check_range(_indices(raw, "input_ids", node), V, "input_ids", "the vocabulary", node)
            ids = self._index_input(raw, "input_ids", node)
            pos, wpe_PE = self._dummy_idx(), self._dummy2()
            if consts["has_positions"]:
                wpe_PE = wpe(inputs)
                pos = inputs[1] if len(inputs) > 1 and inputs[1] is not None else np.arange(S)
                if self.dev.host_readable(pos):
                    pos = _batch_rows(pos, B, S, "position_ids", node)
                    _check_range(pos, wpe_PE.shape[0], "position_ids", "the position table", node)
                pos = self._index_input(pos, "position_ids", node)
                if pos.ndim != 2 or pos.shape[1] != S or pos.shape[0] not in (1, B):
                    raise InputError(f"node {node.name!r}: positions must be [1 or {B}, {S}], got "
                                     f"{list(pos.shape)}")
            tt, wtt_TE = self._dummy_idx(), self._dummy2()
            if consts["has_token_types"]:
                wtt_TE = wtt(inputs)
                t = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.zeros((B, S), np.int64)
                if self.dev.host_readable(t):
                    t = np.ascontiguousarray(np.broadcast_to(_indices(t, "token_type_ids", node), (B, S)))
                    _check_range(t, wtt_TE.shape[0], "token_type_ids", "the token-type table", node)
                tt = self._index_input(t, "token_type_ids", node)
            for table, name in ((wpe_PE, "wpe"), (wtt_TE, "wtt")):
                if table.shape[0] > 1 and table.shape[1] != E:
                    raise InputError(f"node {node.name!r}: {name} has width {table.shape[1]}, wte has {E}")
            g = _sized(gamma(inputs), E, node, "gamma") if consts["has_norm"] else self._dummy1()
            bt = _sized(beta(inputs), E, node, "beta") if consts["has_beta"] else self._dummy1()
            h = self._output(out, 0, (B, S, E))
            threads = self.row_threads(E)
            kern = self.kernel("embedding", hidden=E, threads=threads, **consts)
            self.dev.launch(kern, B * S, threads, ids, pos, wte_VE, wpe_PE, tt, wtt_TE, g, bt, h.reshape(B * S, E))
            return [h]
        return run

    def _prepare_Rotary(self, node):
        H, D = int(node.attrs["num_heads"]), int(node.attrs["head_dim"])
        if D % 2:
            raise InputError(f"node {node.name!r}: Rotary head_dim must be even, got {D}")
        inv_freq = self._operand(node, 2, np.float32)
        threads = self.row_threads(H * D // 2)
        kern = self.kernel("rotary", heads=H, head_dim=D, scaling=float(node.attrs.get("scaling", 1.0)),
                           threads=threads)

        def run(inputs, out):
            x = self._act(inputs[0])
            if x.ndim != 3 or x.shape[2] != H * D:
                raise InputError(f"node {node.name!r}: Rotary expects x [B, S, {H}*{D}], got {list(x.shape)}")
            B, S, _ = x.shape
            pos = inputs[1]
            if self.dev.host_readable(pos):
                pos = _batch_rows(pos, B, S, "positions", node)
            pos = self._index_input(pos, "positions", node)
            y = self._output(out, 0, x.shape)
            self.dev.launch(kern, B * S, threads, x, pos, _sized(inv_freq(inputs), D // 2, node, "inv_freq"), y)
            return [y]
        return run

    def _prepare_LastToken(self, node):
        def run(inputs, out):
            x = self._act(inputs[0])
            if x.ndim != 3:
                raise InputError(f"node {node.name!r}: LastToken expects x [B, S, E], got {list(x.shape)}")
            B, S, E = x.shape
            y = self._output(out, 0, (B, 1, E))
            threads = self.row_threads(E)
            self.dev.launch(self.kernel("last_token", threads=threads), B, threads, x, y)
            return [y]
        return run

    # --- packed encoder execution (eetjit.plan.packing): gather the real tokens' rows, scatter them back ---------
    def _prepare_Pack(self, node):
        def run(inputs, out):
            x = self._act(inputs[0])
            B, S = x.shape[:2]
            F = math.prod(x.shape[2:])
            index = self._token_index(inputs[1], B * S, node)
            N = index.shape[0]
            y = self._output(out, 0, (1, N) + tuple(x.shape[2:]))
            threads = self.row_threads(F)
            self.dev.launch(self.kernel("pack_rows", scatter=False, threads=threads), N, threads,
                            self._contiguous(x).reshape(B * S, F), index, y.reshape(N, F))
            return [y]
        return run

    def _prepare_Unpack(self, node):
        def run(inputs, out):
            x = self._act(inputs[0])
            like = inputs[2]
            B, S = like.shape[:2]
            F = math.prod(x.shape[2:])
            index = self._token_index(inputs[1], B * S, node)
            N = index.shape[0]
            if x.shape[:2] != (1, N):
                raise InputError(f"node {node.name!r}: packed input must be [1, {N}, ...], got {list(x.shape)}")
            y = self._output(out, 0, (B, S) + tuple(x.shape[2:]))
            self.dev.fill_zero(y)
            threads = self.row_threads(F)
            # x may be a column view of a split Linear's block (rows strided): the kernel reads it as it is
            x_NF = x.reshape(N, F) if x.ndim == 3 and x.strides[-1] == x.dtype.itemsize else \
                self._contiguous(x).reshape(N, F)
            self.dev.launch(self.kernel("pack_rows", scatter=True, threads=threads), N, threads,
                            x_NF, index, y.reshape(B * S, F))
            return [y]
        return run

    def _token_index(self, index, rows, node):
        """The packed tokens' row indices on the device, uploaded once per host array (every Pack/Unpack of a run
        gets the same one), checked against the rows of the padded batch."""
        if self.dev.on_device(index) and not self.dev.simulated:
            return index
        hit = self._index_memo
        if hit is not None and hit[0] is index:
            return hit[1]
        host = np.asarray(index).reshape(-1)
        _check_range(_indices(host, "index", node), rows, "index", "the padded batch's rows", node)
        dev = self.dev.upload(host, np.int64)
        self._index_memo = (index, dev)
        return dev

    def _prepare_PadInfo(self, node):
        from eetjit.fused.op_attention import pad_info

        def run(inputs, out):
            mask = inputs[0]
            if self.dev.on_device(mask) and not self.dev.host_readable(mask) and mask.ndim == 2:
                # a mask in device memory (a captured Session.run; the session checked it on the host)
                B = mask.shape[0]
                y = out[0] if out is not None and out[0] is not None else self.dev.empty((B, 2), np.int64)
                threads = 64
                self.dev.launch(self.kernel("pad_info", threads=threads), -(-B // threads), threads, mask, y)
                return [y]
            ranges = pad_info(self.dev.to_host(mask))
            if out is not None and out[0] is not None:
                self.dev.set(out[0], ranges)
                return [out[0]]
            return [self.dev.upload(ranges)]
        return run

    # --- attention ----------------------------------------------------------------------------------------------
    def attention_launch(self, row_blocks: int, max_cols: int, blocks_per_sm: int | None = None) -> tuple[int, int]:
        """(splits, chunk): how many blocks share one query row's key columns, and how many each takes."""
        max_cols = max(int(max_cols), 1)
        cap = -(-max_cols // self.attention_min_chunk)
        per_sm = self.attention_blocks_per_sm if blocks_per_sm is None else blocks_per_sm
        want = -(-self.dev.sm_count * per_sm // max(row_blocks, 1))
        splits = max(1, min(cap, want))
        chunk = -(-max_cols // splits)
        return -(-max_cols // chunk), chunk

    def _vector_attention(self, layout, D, cache) -> bool:
        """Whether attention over this KV cache runs attention_vec.py.j2 (16-byte loads of its rows)."""
        return (layout == "cache" and self.attention_vec and D % self.per_load == 0
                and all(self.dev.simulated or _ptr(c) % 16 == 0 for c in cache))

    def _attention_kernels(self, H, Hkv, D, scale, layout, causal, split, fused_write=False, vec=False,
                           single_cols=0, rows=1, cluster=0):
        """(kernel, threads) of the rows attention (attention_vec.py.j2 with vec); single_cols > 0: the kernel sizes
        its splits by the row's live columns (attention_active_splits in _macros.j2); rows: the launch's query
        rows (B * S * H); cluster > 0 (vec only): the splits, launched as one cluster a row."""
        if vec:
            tune = self.attention_vec_tune
            lanes = min(32, 1 << (D // self.per_load - 1).bit_length())
            groups = max(1, tune["threads"] // lanes)
            few = tune["unroll_few"] > 0 and rows * ATTENTION_VEC_FEW_ROWS_DIV <= self.dev.sm_count
            unroll = (tune["unroll_many"] if rows >= self.dev.sm_count
                      else tune["unroll_few"] if few else tune["unroll"])
            kern = self.kernel("attention_vec", heads=H, kv_heads=Hkv, head_dim=D, scale=scale, lanes=lanes,
                               groups=groups, unroll=unroll, split=split,
                               pipeline=bool(tune["pipeline"]) and not few,
                               fused_write=fused_write, single_cols=single_cols, cluster=cluster)
            return kern, lanes * groups
        lanes = ATTENTION_LANES_SIM if self.dev.simulated else _table(ATTENTION_LANES_GPU, D)
        groups = ATTENTION_GROUPS[self.mode]
        consts = dict(heads=H, kv_heads=Hkv, head_dim=D, scale=scale, layout=layout, lanes=lanes, groups=groups,
                      unroll=ATTENTION_UNROLL[self.mode], split=split, single_cols=single_cols)
        if layout == "bshd":
            consts["causal"] = causal
        else:
            consts["fused_write"] = fused_write
        return self.kernel("attention", **consts), lanes * groups

    def _mma_attention(self, q, kv_args, bounds_args, B, S, H, Hkv, D, scale, layout, causal, y,
                       skip_pad_rows=False) -> bool:
        """Flash attention on the tensor cores (attention_mma.py.j2) when it can run here: False (nothing done)
        for float32, head dims not whole k-steps of 16 or past ATTENTION_MMA_MAX_D, a GPU before sm_80, or K/V rows
        that 16-byte loads cannot read (unaligned base or strides) and q rows that 4-byte loads cannot."""
        if not (self.dtype.itemsize == 2 and D % 16 == 0 and D <= ATTENTION_MMA_MAX_D and self.dev.mma_sync):
            return False
        if not self.dev.simulated:
            if not all(_ptr(a) % 16 == 0 and all(st % 16 == 0 for st in a.strides[:-1]) for a in kv_args):
                return False
            if _ptr(q) % 4 or any(st % 4 for st in q.strides[:-1]):
                return False
        tune = self.attention_mma_tune
        consts = dict(heads=H, kv_heads=Hkv, head_dim=D, scale=scale, layout=layout, **tune)
        if layout == "bshd":
            consts.update(causal=causal, skip_pad_rows=skip_pad_rows)
        qt = 16 * tune["warps"]
        self.dev.launch(self.kernel("attention_mma", **consts), (-(-S // qt), B * H), 32 * tune["warps"], q,
                        *kv_args, *bounds_args, y)
        return True

    def _tiled_attention(self, H, Hkv, D, scale, layout, causal):
        """(kernel, threads, query rows per block) of the tiled attention, or None when its tiles would not fit
        in shared memory (head dims past 256)."""
        tile = dict(ATTENTION_TILE[self.mode])
        kt = ATTENTION_TILE_COLS_SIM if self.dev.simulated else _table(ATTENTION_TILE_COLS_GPU, D)
        qt = tile["warps"] * tile["rows"]
        smem = 4 * (qt * D + kt * (2 * D + 1) + tile["warps"] * kt)
        if smem > ATTENTION_TILE_SMEM:
            return None
        consts = dict(heads=H, kv_heads=Hkv, head_dim=D, scale=scale, layout=layout, kt=kt, **tile)
        if layout == "bshd":
            consts["causal"] = causal
        return self.kernel("attention_tiled", **consts), tile["lanes"] * tile["warps"], qt

    def _gemm_attention(self, q, kv_args, bounds_args, B, S, H, Hkv, D, scale, layout, causal, T, y) -> bool:
        """Attention of many queries as batched GEMMs on the tensor cores (scores = scale * Q K^T, out = P V) around
        a masked softmax kernel, straight on the activation layouts: per head h, one strided batched GEMM over the
        sequences reads Q from q [B, S, H*D] (columns h*D..), K/V from the cache [B, Hkv, T_max, D] (columns
        0..T-1) or from [B, T, Hkv*D], and the second writes y [B, S, H*D] in place; no copies into a batch layout.
        The batch goes in chunks whose scores ([n, H, S, T]) and probabilities fit attention_gemm_max_bytes
        (one scratch set, shared by every attention op); False (nothing done) when not even one sequence fits."""
        rep = H // Hkv
        # scores: float16 for float16 storage (what an fp16 eager attention does: the GEMM accumulates and scales in
        # float32, then rounds; half the traffic of the largest buffer), float32 otherwise (bfloat16 keeps too few
        # bits for the exponent of a softmax)
        sdt = np.dtype(np.float16) if self.dtype == np.float16 else np.dtype(np.float32)
        per_seq = H * S * T * (sdt.itemsize + self.dtype.itemsize)
        Bc = min(B, self.attention_gemm_chunk or self.attention_gemm_max_bytes // max(per_seq, 1))
        if per_seq > self.attention_gemm_max_bytes:
            Bc = 0
        if Bc < 1 or T == 0:
            return False
        sc = self._attn_scratch
        scores_all = sc.get("scores", (Bc, H, S, T), sdt)
        probs_all = sc.get("probs", (Bc, H, S, T), self.dtype)
        lanes = SOFTMAX_LANES[self.mode]
        cols = 1 << max(0, (-(-T // lanes) - 1).bit_length())
        if T > SOFTMAX_WARP_MAX_COLS or cols > SOFTMAX_WARP_MAX_COLS // 32:     # at most 64 registers per lane
            cols = 0
        threads = SOFTMAX_WARP_THREADS[self.mode] if cols else self.row_threads(T)
        rows_per_block = threads // lanes if cols else 1
        consts = dict(heads=H, kv_heads=Hkv, layout=layout, threads=threads, cols=cols)
        if cols:
            consts["lanes"] = lanes
        if layout == "bshd":
            consts["causal"] = causal
        softmax = self.kernel("attention_softmax", **consts)
        if layout == "cache":
            k_all, v_all = (c[:, :, :T, :] for c in kv_args)           # [B, Hkv, T, D] views
        else:
            k_all, v_all = kv_args
        for b0 in range(0, B, Bc):
            b1 = min(B, b0 + Bc)
            n = b1 - b0
            scores, probs = scores_all[:n], probs_all[:n]
            if self.dev.simulated:
                # per head, one strided batched GEMM over the sequences (NumPy here: the same products)
                for h in range(H):
                    self._batched.simulate(q[b0:b1, :, h * D:(h + 1) * D],
                                           _head(k_all, layout, b0, b1, h // rep, D), scores[:, h],
                                           transpose_b=True, alpha=scale)
            else:   # every (sequence, head) of the chunk in one pointer-array batched GEMM
                q_ptrs, k_ptrs, s_ptrs = _head_pointers(q, k_all, scores, layout, b0, b1, H, rep, D)
                ld_q, ld_k, ld_s = _lds(q, k_all, scores, layout)
                self._batched.by_pointers(q_ptrs, k_ptrs, s_ptrs, S, T, D, ld_q, ld_k, ld_s, (q, k_all, scores),
                                          transpose_b=True, alpha=scale)
            bounds = (bounds_args[0][b0:b1], bounds_args[1]) if layout == "cache" else (bounds_args[0][b0:b1],)
            rows = n * H * S
            self.dev.launch(softmax, -(-rows // rows_per_block), threads, scores.reshape(rows, T), *bounds, S,
                            probs.reshape(rows, T))
            if self.dev.simulated:
                for h in range(H):
                    self._batched.simulate(probs[:, h], _head(v_all, layout, b0, b1, h // rep, D),
                                           y[b0:b1, :, h * D:(h + 1) * D])
            else:
                y_ptrs, v_ptrs, p_ptrs = _head_pointers(y, v_all, probs, layout, b0, b1, H, rep, D)
                ld_y, ld_v, ld_p = _lds(y, v_all, probs, layout)
                self._batched.by_pointers(p_ptrs, v_ptrs, y_ptrs, S, D, T, ld_p, ld_v, ld_y, (probs, v_all, y))
        return True

    def _run_attention(self, scratch, q, kv_args, bounds_args, B, S, H, Hkv, D, scale, layout, causal, max_cols,
                       y, new_kv=None, gemm_cols=None, skip_pad_rows=False):
        """One attention launch (or the batched-GEMM attention). new_kv = (k, v) of a one-token step whose cache
        write the kernel does itself; gemm_cols = the key columns when known on the host (the GEMM path's T);
        skip_pad_rows: rows outside the ranges may stay unwritten (pad_rows_unused)."""
        if (S >= self.attention_mma_min_rows and new_kv is None
                and self._mma_attention(q, kv_args, bounds_args, B, S, H, Hkv, D, scale, layout, causal, y,
                                        skip_pad_rows)):
            return
        if (S >= self.attention_gemm_min_rows and new_kv is None and gemm_cols is not None
                and self._gemm_attention(q, kv_args, bounds_args, B, S, H, Hkv, D, scale, layout, causal, gemm_cols,
                                         y)):
            return
        if S >= self.attention_tile_min_rows and new_kv is None:
            tiled = self._tiled_attention(H, Hkv, D, scale, layout, causal)
            if tiled is not None:
                kern, threads, qt = tiled
                self.dev.launch(kern, (-(-S // qt), B * H), threads, q, *kv_args, *bounds_args, y)
                return
        vec = self._vector_attention(layout, D, kv_args)
        splits, chunk = self.attention_launch(S * B * H, max_cols,
                                              self.attention_vec_tune["blocks_per_sm"] if vec else None)
        dynamic = splits >= self.attention_dynamic_splits
        cluster = splits if (vec and self.attention_cluster and 1 < splits <= ATTENTION_CLUSTER_MAX
                             and not dynamic) else 0
        kern, threads = self._attention_kernels(H, Hkv, D, scale, layout, causal, splits > 1, new_kv is not None,
                                                vec, self.attention_single_cols if dynamic else 0, S * B * H,
                                                cluster)
        if cluster:
            part_ml = part_acc = self._dummy_f32_5()
            count = self._dummy("c1", (1,), np.int32)
        elif splits > 1:
            part_ml = scratch.get("ml", (B, H, S, splits, 2), np.float32)
            part_acc = scratch.get("acc", (B, H, S, splits, D), np.float32)
            count = scratch.get("count", (B * H * S,), np.int32, zeros=True)     # reset by each row's last block
        else:
            part_ml = part_acc = self._dummy_f32_5()
            count = self._dummy("c1", (1,), np.int32)
        extra = list(new_kv) if new_kv is not None else ([self._dummy3(), self._dummy3()] if layout == "cache" else [])
        self.dev.launch(kern, (splits, S, B * H), threads, q, *kv_args, *bounds_args, chunk, y, part_ml, part_acc,
                        count, *extra, **({"cluster": cluster} if cluster else {}))

    def _prepare_Attention(self, node):
        H, Hkv, D, scale = _heads(node.attrs)
        causal = bool(node.attrs.get("causal", 0))
        skip_pad_rows = bool(node.attrs.get("pad_rows_unused", 0))
        scratch = _Scratch(self)

        def run(inputs, out):
            q, k, v = (self._act(a) for a in inputs[:3])
            B, S, _ = q.shape
            T = k.shape[1]
            _check_shape(q, (B, S, H * D), "q", node)
            _check_shape(k, (B, T, Hkv * D), "k", node)
            _check_shape(v, (B, T, Hkv * D), "v", node)
            ranges = inputs[3] if len(inputs) > 3 else None
            if ranges is None or self.dev.host_readable(ranges):
                ranges = self.dev.upload(_host_ranges(ranges, B, T, node), np.int64)
            y = self._output(out, 0, (B, S, H * D))
            self._run_attention(scratch, q, (k, v), (ranges,), B, S, H, Hkv, D, scale, "bshd", causal, T, y,
                                gemm_cols=T, skip_pad_rows=skip_pad_rows)
            return [y]
        return run

    def _prepare_CachedAttention(self, node):
        H, Hkv, D, scale = _heads(node.attrs)
        scratch = _Scratch(self)
        kv_threads = 8 if self.dev.simulated else min(256, max(32, -(-D // 32) * 32))
        kv_write = self.kernel("kv_cache_write", kv_heads=Hkv, head_dim=D, threads=kv_threads)

        def run(inputs, out):
            q, k, v = (self._act(a) for a in inputs[:3])
            k_cache, v_cache = inputs[3], inputs[4]
            B, S, _ = q.shape
            _check_shape(q, (B, S, H * D), "q", node)
            _check_shape(k, (B, S, Hkv * D), "k", node)
            _check_shape(v, (B, S, Hkv * D), "v", node)
            self._check_cache(k_cache, v_cache, B, Hkv, D)
            T = k_cache.shape[2]
            start, step = inputs[5], inputs[6]
            t0 = None
            if self.dev.host_readable(step):
                t0 = int(np.asarray(step).reshape(-1)[0])
                if t0 < 0 or t0 + S > T:
                    raise InputError(f"node {node.name!r}: columns {t0}..{t0 + S - 1} do not fit the KV cache of "
                                     f"{T} columns (max_seq_len)")
                step = scratch.get("step", (1,), np.int64)      # set on the stream: no wait for queued work
                self.dev.fill(step, t0)
            if self.dev.host_readable(start):
                start = self.dev.upload(np.clip(np.asarray(start, np.int64).reshape(B), 0, T), np.int64)
            # a one-token step: the attention kernel writes the new column itself (one launch less per layer)
            new_kv = (k, v) if S == 1 and self.attention_fused_write else None
            if new_kv is None:
                self.dev.launch(kv_write, (S, B * Hkv), kv_threads, k, v, k_cache, v_cache, step)
            # A one-token step is sized by the cache capacity, so one launch configuration (one captured graph)
            # serves every step; blocks past the current column find no work.
            max_cols = T if (S == 1 or t0 is None) else t0 + S
            y = self._output(out, 0, (B, S, H * D))
            self._run_attention(scratch, q, (k_cache, v_cache), (start, step), B, S, H, Hkv, D, scale, "cache",
                                True, max_cols, y, new_kv, gemm_cols=None if t0 is None else t0 + S)
            return [y]
        return run

    def _check_cache(self, k_cache, v_cache, B, Hkv, D):
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not (self.dev.on_device(c) and c.ndim == 4 and c.shape[0] == B and c.shape[1] == Hkv
                    and c.shape[3] == D and c.dtype == self.dtype and c.flags.c_contiguous):
                got = f"{getattr(c, 'dtype', type(c).__name__)}{list(getattr(c, 'shape', ()))}"
                raise InputError(f"{name} must be a C-contiguous device array {self.dtype.name}[{B}, {Hkv}, "
                                 f"T_max, {D}] (written in place), got {got}")

    # --- greedy decoding on the device ---------------------------------------------------------------------------
    def greedy_tokens(self, logits, tokens_B, ids_B1=None, positions_B1=None, step_1=None) -> None:
        """tokens_B[b] = argmax of logits row b ([B, V] or [B, 1, V]); with ids/positions/step given, also
        ids[b, 0] = token, positions += 1, step += 1 (the next decode step's inputs, set on the device)."""
        B = logits.shape[0]
        logits_BV = logits.reshape(B, logits.shape[-1])
        advance = ids_B1 is not None
        threads, splits = self.argmax_tune["threads"], self.argmax_tune["splits"]
        kern = self.kernel("argmax", advance=advance, threads=threads, splits=splits)
        if not advance:
            ids_B1, positions_B1, step_1 = self._dummy_idx(), self._dummy_idx(), self._dummy_idx().reshape(1)
        # the partials and the per-row counts (zero between launches: the last block resets its row's) outlive a
        # captured step (Device.keep)
        part_v = self._argmax_scratch.get("v", (B, splits), np.float32)
        part_j = self._argmax_scratch.get("j", (B, splits), np.int64)
        count = self._argmax_scratch.get("count", (B,), np.int32, zeros=True)
        with stream_context(self.dev):
            self.dev.launch(kern, (splits, B), threads, logits_BV, tokens_B, ids_B1, positions_B1, step_1, part_v,
                            part_j, count)

    # --- plain ONNX ops -----------------------------------------------------------------------------------------
    def _fallback(self, node, graph):
        from eetjit.reference.executor import run_node
        opset = graph.opset(node.domain) if graph is not None else 0

        def run(inputs, out):
            on_dev = [a is not None and self.dev.on_device(a) and not self.dev.simulated for a in inputs]
            if not any(on_dev):
                outs = run_node(node, list(inputs), graph)
            elif node.op_type == "Shape":
                stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=inputs[0].shape,
                                                           strides=(0,) * inputs[0].ndim)
                outs = run_node(node, [stand_in], graph)
            elif node.op_type in VIEW_OPS and not any(on_dev[1:]):
                x = inputs[0]
                outs = [self._contiguous(x).reshape(_view_shape(node, opset, x.shape, inputs))]
            else:
                # Anything else on device data goes through the host: correct, but not capturable.
                if self.dev.capturing:
                    raise CaptureError(f"node {node.name!r} ({node.op_type}) needs device data on the host")
                self.host_roundtrips += 1
                host = [None if a is None else self.dev.to_host(a) if d else a for a, d in zip(inputs, on_dev)]
                outs = [self.dev.upload(o) for o in run_node(node, host, graph)]
            if out is not None:
                for i, o in enumerate(outs):
                    if i < len(out) and out[i] is not None and out[i] is not o:
                        self.dev.copy(out[i], o)
                        outs[i] = out[i]
            return outs
        return run

    # --- helpers ------------------------------------------------------------------------------------------------
    def _upload_const(self, arr, dtype, how: str = "", transform=None, pad_cols: int | None = None):
        """The device copy of a constant (converted, optionally transformed, its last axis zero-padded to
        `pad_cols`), uploaded once per backend: the session's plans (run and generate) share it. Float data bound
        for float16/float32 on a GPU is converted (and padded) on the device (Device.upload_cast), and the host
        waits for that conversion: kernels read constants before their programmatic-launch wait (weights, biases,
        a folded norm's column sums), where a cast kernel queued just before them may not have finished (a
        constant made at its first use, as the column sums are). float16 data bound for float16 (a folded weight,
        a float16 model) is copied as it is (a copy, which no launch overtakes)."""
        key = (id(arr), np.dtype(dtype).str, how)
        hit = self._consts.get(key)
        if hit is not None and hit[0] is arr:
            return hit[1]
        host = np.asarray(arr)
        if transform is not None:
            host = transform(host)
        half = host.dtype == np.dtype(dtype) and host.dtype != np.float32     # already in the half type: as is
        if (host.dtype.kind == "f" and not half and not self.dev.simulated
                and np.dtype(dtype) in (np.float16, np.float32)):
            dev = self.dev.upload_cast(host, dtype, pad_cols)
            self.dev.synchronize()
        else:
            if pad_cols is not None:
                host = _pad_cols(host, pad_cols)
            dev = self.dev.upload(np.ascontiguousarray(np.asarray(host, np.float32 if host.dtype.kind == "f"
                                                                  and not half else None)), dtype)
        self._consts[key] = (arr, dev)
        return dev

    def _operand(self, node, i, dtype=None):
        """inputs -> input i on the device (a constant uploaded once, here); None when absent."""
        v = node.input(i)
        dtype = self.dtype if dtype is None else dtype
        if v is None:
            return lambda inputs: None
        if v.is_const:
            arr = self._upload_const(v.const, dtype)
            return lambda inputs: arr
        return lambda inputs: None if _input(inputs, i) is None else self.dev.upload(inputs[i], dtype)

    def _act(self, x):
        """An activation input on the device in the storage dtype (host inputs are uploaded)."""
        if x is None:
            raise InputError("a required input is missing")
        return self.dev.upload(x, self.dtype)

    def _index_input(self, x, name, node):
        if self.dev.on_device(x) and x.dtype == np.int64:
            return x
        return self.dev.upload(_indices(self.dev.to_host(x), name, node), np.int64)

    def _contiguous(self, x):
        if x.flags.c_contiguous:
            return x
        if self.dev.capturing:
            raise CaptureError("a strided input needed a contiguous copy while capturing a CUDA graph")
        with stream_context(self.dev):
            return self.dev.xp.ascontiguousarray(x)

    def _rows(self, b, shape, E):
        """b as [N, E] rows of the broadcast `shape`, or [1, E] when it is one row broadcast over all."""
        if tuple(b.shape) == tuple(shape):
            return self._contiguous(b).reshape(-1, E)
        if b.shape[-1] == E and b.size == E:
            return self._contiguous(b).reshape(1, E)
        return self._contiguous(self.dev.xp.broadcast_to(b, shape)).reshape(-1, E)

    def _output(self, out, i, shape):
        if out is None or i >= len(out) or out[i] is None:
            return self.empty(shape)
        self._check_out(out[i], shape)
        return out[i]

    def _check_out(self, y, shape):
        if not (self.dev.on_device(y) and tuple(y.shape) == tuple(shape) and y.dtype == self.dtype
                and y.flags.c_contiguous):
            got = f"{getattr(y, 'dtype', type(y).__name__)}{list(getattr(y, 'shape', ()))}"
            raise InputError(f"output buffer must be a C-contiguous device array {self.dtype.name}{list(shape)}, "
                             f"got {got}")

    def _dummy(self, name, shape, dtype):
        d = self._dummies.get(name)
        if d is None:
            d = self._dummies[name] = self.zeros(shape, dtype)
        return d

    def _dummy1(self):
        return self._dummy("f1", (1,), np.float32)

    def _dummy2(self):
        return self._dummy("s2", (1, 1), self.dtype)

    def _dummy3(self):
        return self._dummy("s3", (1, 1, 1), self.dtype)

    def _dummy_idx(self):
        return self._dummy("i2", (1, 1), np.int64)

    def _dummy_f32_5(self):
        return self._dummy("f5", (1, 1, 1, 1, 1), np.float32)


def _mma_slot_bytes(M, vw) -> int:
    """Bytes of one of gemv_mma.py.j2's shared slots: 8 vw columns x (M rounded up to 8-row tiles, + 1) float32."""
    return 8 * vw * (8 * -(-M // 8) + 1) * 4


class _NormPrologue:
    """The x of a NormLinear's GEMM: the norm of a (+ b), over the last dim. `fits`/`gemv_args` hand it to
    gemv_nk's or gemv_mma's prologue (one launch, the sum stored by the GEMV); `normed()` runs the norm kernel
    instead, into a row block shared by every NormLinear (they run one after another), and returns it. With
    `stats` (_pre_linear: a is the stored sum, its row statistics written by the GEMM that made it) only
    gemv_mma's folded prologue takes it, and there is no norm kernel to fall back on."""

    def __init__(self, backend, kind, add, eps, has_beta, a, b, gamma, beta, sum_, shape, run_norm, colsum=None,
                 stats=None):
        self.backend, self.kind, self.add, self.eps, self.has_beta = backend, kind, add, eps, has_beta
        self.b, self.gamma, self.beta, self.sum, self.shape, self.run_norm = b, gamma, beta, sum_, shape, run_norm
        # gamma folded into the GEMM's weight (CudaBackend._fold_norm): colsum() gives the folded prologues
        # (gemv_mma's, gemv_nk's) the column sums of W' on the device (LayerNorm; a dummy for RMSNorm); None: not
        # folded
        self.colsum = colsum
        # the rows' partial sums and sums of squares [strips, M, 2], written by the GEMM that made a (_pre_linear):
        # gemv_mma reads them instead of taking the statistics itself (only gemv_mma: _gemv_takes)
        self.stats = stats
        # the GEMM's rows: a broadcast up to the sum's shape (b may have more rows than a)
        self.a = a if tuple(a.shape) == shape else backend._contiguous(backend.dev.xp.broadcast_to(a, shape))

    def fits(self, M, K, simulated) -> bool:
        """Whether a GEMV's prologue can take this norm: b one row or M rows, every operand whole aligned vectors."""
        if self.gamma is None or self.gamma.size != K or (self.has_beta and self.beta.size != K):
            return False
        arrays = [self.gamma] + ([self.beta] if self.has_beta else [])
        if self.add:
            if self.b.size not in (K, M * K):
                return False
            arrays += [self.b, self.sum]
        if not all(x.flags.c_contiguous for x in arrays):
            return False
        return simulated or all(_ptr(x) % 16 == 0 for x in arrays)

    def gemv_args(self, M, K, mma=False, fold=False):
        """(template consts, kernel args) of the GEMV's prologue; mma: gemv_mma's, folded where the weight is;
        fold: gemv_nk's, folded where the weight is."""
        be = self.backend
        consts = dict(norm=self.kind, add=self.add, epsilon=self.eps, has_beta=self.has_beta)
        b = self.b.reshape(-1, K) if self.add else be._dummy2()
        s = self.sum.reshape(M, K) if self.add else be._dummy2()
        if self.stats is not None:
            if not (mma and self.colsum is not None and not self.add):
                raise RuntimeError("row statistics from memory are for gemv_mma's folded prologue only")
            return dict(consts, fold=True, pstats=self.stats.shape[0]), (b, self.colsum(), s, self.stats)
        if (mma or fold) and self.colsum is not None:
            return dict(consts, fold=True), (b, self.colsum(), s)
        return consts, (b, self.gamma, self.beta if self.has_beta else be._dummy1(), s)

    def normed(self):
        if self.run_norm is None:
            raise RuntimeError("a NormLinear's row statistics were written for gemv_mma, which did not take them")
        y = self.backend._shared_scratch.get("norm", self.shape, self.backend.dtype)
        self.run_norm(y)
        return y


class _Scratch:
    """Per-op temporaries by name, each an LRU of SCRATCH_SHAPES (shape, dtype) entries. A decode step allocates
    them in its warm-up run (never while capturing) and keeps them (Device.keep), so what its graph points to
    outlives eviction here."""

    def __init__(self, backend: CudaBackend):
        self.backend = backend
        self.arrays: dict[str, OrderedDict] = {}

    def get(self, name, shape, dtype, zeros=False):
        """The op's scratch `name` of this shape (zero-filled when first made, with zeros=True)."""
        lru = self.arrays.setdefault(name, OrderedDict())
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        a = lru.get(key)
        if a is None:
            a = (self.backend.dev.zeros if zeros else self.backend.dev.empty)(key[0], dtype)
            lru[key] = a
            if len(lru) > SCRATCH_SHAPES:
                lru.popitem(last=False)
        else:
            lru.move_to_end(key)
        self.backend.dev.keep(a)
        return a


# --- module helpers -------------------------------------------------------------------------------------------
def _input(inputs, i):
    return inputs[i] if i < len(inputs) else None


def _sized(arr, n, node, name):
    if arr is None or arr.size != n:
        got = "nothing" if arr is None else f"shape {list(arr.shape)}"
        raise InputError(f"node {node.name!r}: {name} must have {n} values, got {got}")
    return arr.reshape(n)


def _check_shape(x, shape, name, node):
    if tuple(x.shape) != tuple(shape):
        where = f"node {node.name!r}: " if node is not None else ""
        raise InputError(f"{where}{name} must have shape {list(shape)}, got {list(x.shape)}")


def _host_ranges(ranges, B, T, node):
    """ranges [B, 2] int64 clipped to [0, T] (the kernels trust them as loop bounds); None: all columns."""
    if ranges is None:
        out = np.zeros((B, 2), np.int64)
        out[:, 1] = T
        return out
    r = np.asarray(ranges)
    if r.shape != (B, 2):
        raise InputError(f"node {node.name!r}: ranges must have shape [{B}, 2], got {list(r.shape)}")
    return np.clip(r, 0, T).astype(np.int64)


def _pad_cols(W, Np):
    """W [K, N] with zero columns appended up to Np (a copy only when padding)."""
    W = np.asarray(W)
    if W.shape[-1] == Np:
        return W
    out = np.zeros(W.shape[:-1] + (Np,), W.dtype)
    out[..., :W.shape[-1]] = W
    return out


def _ptr(a) -> int:
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    return int(a.__array_interface__["data"][0])


def _owner(a):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def _head(kv, layout, b0, b1, g, D):
    """Sequences b0..b1 of kv head g as [n, T, D]: from the cache view [B, Hkv, T, D] or from [B, T, Hkv*D]."""
    return kv[b0:b1, g] if layout == "cache" else kv[b0:b1, :, g * D:(g + 1) * D]


def _head_pointers(x, kv, mat, layout, b0, b1, H, rep, D):
    """Device addresses, per (sequence b0..b1, head h) in that order, of: head h's [S, D] block of x [B, S, H*D];
    kv head h // rep's [T, D] block of kv (layout as _head); the [S, T] matrix (b - b0, h) of mat [n, H, S, T]."""
    n = b1 - b0
    b = np.repeat(np.arange(b0, b1, dtype=np.int64), H)
    h = np.tile(np.arange(H, dtype=np.int64), n)
    g = h // rep
    x_ptrs = _ptr(x) + b * x.strides[0] + h * (D * x.dtype.itemsize)
    if layout == "cache":
        kv_ptrs = _ptr(kv) + b * kv.strides[0] + g * kv.strides[1]
    else:
        kv_ptrs = _ptr(kv) + b * kv.strides[0] + g * (D * kv.dtype.itemsize)
    mat_ptrs = _ptr(mat) + (b - b0) * mat.strides[0] + h * mat.strides[1]
    return x_ptrs, kv_ptrs, mat_ptrs


def _lds(x, kv, mat, layout):
    """Row strides (in elements) of the blocks of _head_pointers."""
    item = lambda a: a.dtype.itemsize    # noqa: E731
    return (x.strides[1] // item(x), (kv.strides[2] if layout == "cache" else kv.strides[1]) // item(kv),
            mat.strides[2] // item(mat))


def _split_base(out, M, N, split):
    """The [M, N] array that the given split outputs are column views of (at the right offsets), else None.
    The ExecutionPlan (column_outputs) and a warm-up run hand back exactly such views: the GEMM then writes in
    place."""
    if out is None or len(out) < len(split) or any(o is None for o in out[:len(split)]):
        return None
    owner = _owner(out[0])
    if not owner.flags.c_contiguous or owner.dtype != out[0].dtype:
        return None
    item = owner.dtype.itemsize
    first = _ptr(out[0]) - _ptr(owner)
    if first < 0 or first % item or first // item + M * N > owner.size:
        return None
    o = 0
    for view, n in zip(out, split):
        lead = tuple(view.shape[:-1])
        if (_owner(view) is not owner or _ptr(view) != _ptr(out[0]) + o * item or view.shape[-1] != n
                or math.prod(lead) != M or view.strides[-1] != item):
            return None
        step = N * item
        for d in range(len(lead) - 1, -1, -1):          # row-major over the lead dims, rows N elements apart
            if lead[d] > 1 and view.strides[d] != step:
                return None
            step *= lead[d]
        o += n
    if o != N:
        return None
    return owner.reshape(-1)[first // item:first // item + M * N].reshape(M, N)


def _view_shape(node, opset, shape, inputs):
    """The output shape of a view op (Reshape, Squeeze, Unsqueeze, Flatten, Identity) on an input of `shape`,
    with ONNX semantics; the shape operands are host arrays."""
    from eetjit.reference.ops._common import int_list, normalize_axes
    op, attrs, rank = node.op_type, node.attrs, len(shape)
    size = math.prod(shape)
    if op == "Identity":
        return tuple(shape)
    if op == "Flatten":
        axis = int(attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        return (math.prod(shape[:axis]), math.prod(shape[axis:]))
    if op == "Reshape":
        dims = int_list(inputs[1])
        allowzero = int(attrs.get("allowzero", 0))
        out = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = size // known if known else 0
        if math.prod(out) != size:
            raise InputError(f"node {node.name!r}: cannot reshape {list(shape)} into {dims}")
        return tuple(out)
    axes = attrs.get("axes") if opset < 13 else (int_list(inputs[1]) if len(inputs) > 1 and inputs[1] is not None
                                                 else None)
    if op == "Squeeze":
        if not axes:
            return tuple(d for d in shape if d != 1)
        axes = set(normalize_axes(axes, rank, "Squeeze"))
        return tuple(d for i, d in enumerate(shape) if i not in axes)
    out = list(shape)                                         # Unsqueeze
    for a in sorted(normalize_axes(list(axes or []), rank + len(axes or []), "Unsqueeze")):
        out.insert(a, 1)
    return tuple(out)


__all__ = ["CudaBackend", "PreparedOp"]
