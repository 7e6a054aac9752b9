"""Probe (GPU): could one persistent kernel run a one-row decode step's GEMV chain nearer the weight floor than a
kernel per GEMV? The four projections of a GPT-2-style layer (q/k/v, attention output, MLP up, MLP down; no norm,
bias or attention between them), `--layers` layers of distinct random float16 weights, each GEMV reading the
previous one's output: one launch for the whole chain.

    python benchmarks/gpu/bench_persistent.py [--hidden 1600 --layers 48] [--configs 256,4,12 128,8,12 256,4,1]

Why: a kernel per GEMV stops the weight stream at every boundary (the next kernel's blocks cannot load until the
previous kernel's blocks leave the SMs; an L2 prefetch of the next weight thrashes, session 18). Here every thread
streams its own future weight vectors into a ring of shared-memory slots with `cp.async` (S slots of 16 bytes a
thread), independent of the data dependencies; the GEMVs wait only for x, at a grid barrier (a global counter:
`red.release.gpu` to arrive, polled with `ld.relaxed.gpu` and one fence after, or `ld.acquire.gpu` with
`--acquire`) between phases; x of a phase is staged in shared memory once a block. A warp computes a column (all 32
lanes over K); the columns of a phase go round robin over every warp of the grid, rotated by the columns of earlier
phases so the warps that took an extra column once do not take it again. All blocks must be resident at once (grid = SMs x
blocks an SM, registers capped to fit), or the barrier would wait forever; a poll gives up after ~2^24 rounds and
raises a flag instead.

Each config "threads,blocks,slots" prints us a layer, the ratio to the floor (weight bytes at the measured copy
bandwidth), and the largest error of every phase's output against float32 GEMVs of the kernel's own inputs (a
2-layer run). `--barriers` also times the same number of grid barriers with no weights (x of one vector).

Measured (H200, session 20; benchmarks/gpu/NOTES.md): the idea lost. A grid barrier alone cost ~4 us (16-18 us for
a layer's 4, at 132 to 528 resident blocks alike), about twice a kernel boundary in a captured graph with
programmatic dependent launch; the chain ran 39.6-46.9 us a layer at XL-size's width (2.7-3.1x the floor) against
23.0 for gemv_nk's four kernels in the same call, and 33 / 35 us at GPT-2 medium's / small's widths (gemv_nk ~11 /
~8). Kept as the probe that measured it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

# phase table columns
W_OFF, N_COL, K_DIM, X_OFF, Y_OFF, ROT, VPL, NV = range(8)


def _intrinsics():
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.core.extending import intrinsic

    i64 = ir.IntType(64)

    def addr(context, builder, arrty, arr, idxty, idx):
        data = cgutils.create_struct_proxy(arrty)(context, builder, value=arr).data
        size = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
        off = builder.mul(context.cast(builder, idx, idxty, types.int64), ir.Constant(i64, size))
        return builder.add(builder.ptrtoint(data, i64), off)

    def bare(text):
        def make(typingctx):
            def codegen(context, builder, sig, args):
                fty = ir.FunctionType(ir.VoidType(), [])
                builder.call(ir.InlineAsm(fty, text, "~{memory}", side_effect=True), [])
                return context.get_dummy_value()
            return types.none(), codegen
        return intrinsic(make)

    @intrinsic
    def cp_async16(typingctx, sarr, sidx, garr, gidx):
        """16 bytes of garr at element gidx into the shared array sarr at element sidx (L1 bypassed)."""
        sig = types.none(sarr, sidx, garr, gidx)

        def codegen(context, builder, sig, args):
            s = addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            g = addr(context, builder, sig.args[2], args[2], sig.args[3], args[3])
            fty = ir.FunctionType(ir.VoidType(), [i64, i64])
            asm = ir.InlineAsm(fty, "{\n.reg .u64 s, g;\n.reg .u32 s32;\ncvta.to.shared.u64 s, $0;\n"
                                    "cvt.u32.u64 s32, s;\ncvta.to.global.u64 g, $1;\n"
                                    "cp.async.cg.shared.global [s32], [g], 16;\n}", "l,l,~{memory}",
                               side_effect=True)
            builder.call(asm, [s, g])
            return context.get_dummy_value()
        return sig, codegen

    def ld128(cache):
        @intrinsic
        def load(typingctx, arr, idx):
            """The 4 words at element idx of arr (ld.global.<cache>.v4)."""
            sig = types.UniTuple(types.uint32, 4)(arr, idx)

            def codegen(context, builder, sig, args):
                p = addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                fty = ir.FunctionType(ir.LiteralStructType([ir.IntType(32)] * 4), [i64])
                asm = ir.InlineAsm(fty, "{\n.reg .u64 g;\ncvta.to.global.u64 g, $4;\n"
                                        "ld.global.%s.v4.u32 {$0, $1, $2, $3}, [g];\n}" % cache,
                                   "=r,=r,=r,=r,l,~{memory}", side_effect=True)
                words = builder.call(asm, [p])
                return context.make_tuple(builder, sig.return_type,
                                          [builder.extract_value(words, j) for j in range(4)])
            return sig, codegen
        return load

    @intrinsic
    def arrive(typingctx, arr, idx):
        sig = types.none(arr, idx)

        def codegen(context, builder, sig, args):
            p = addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            fty = ir.FunctionType(ir.VoidType(), [i64])
            asm = ir.InlineAsm(fty, "{\n.reg .u64 g;\ncvta.to.global.u64 g, $0;\n"
                                    "red.release.gpu.global.add.u32 [g], 1;\n}", "l,~{memory}", side_effect=True)
            builder.call(asm, [p])
            return context.get_dummy_value()
        return sig, codegen

    def poll_at(sem):
        @intrinsic
        def poll(typingctx, arr, idx):
            """The word at element idx of arr, by ld.<sem>.gpu (acquire, or relaxed with a fence after)."""
            sig = types.uint32(arr, idx)

            def codegen(context, builder, sig, args):
                p = addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                fty = ir.FunctionType(ir.IntType(32), [i64])
                asm = ir.InlineAsm(fty, "{\n.reg .u64 g;\ncvta.to.global.u64 g, $1;\n"
                                        "ld.%s.gpu.global.u32 $0, [g];\n}" % sem, "=r,l,~{memory}", side_effect=True)
                return builder.call(asm, [p])
            return sig, codegen
        return poll

    @intrinsic
    def unpack2(typingctx, word):
        sig = types.UniTuple(types.float32, 2)(word)

        def codegen(context, builder, sig, args):
            u = context.cast(builder, args[0], sig.args[0], types.uint32)
            f32 = ir.FloatType()
            pair = builder.fpext(builder.bitcast(u, ir.VectorType(ir.HalfType(), 2)), ir.VectorType(f32, 2))
            halves = [builder.extract_element(pair, ir.Constant(ir.IntType(32), j)) for j in range(2)]
            return context.make_tuple(builder, sig.return_type, halves)
        return sig, codegen

    @intrinsic
    def to_half_bits(typingctx, x):
        sig = types.uint16(x)

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], types.float32)
            fty = ir.FunctionType(ir.IntType(16), [ir.FloatType()])
            return builder.call(ir.InlineAsm(fty, "cvt.rn.f16.f32 $0, $1;", "=h,f"), [v])
        return sig, codegen

    return dict(addr=addr, cp_async16=cp_async16, ld128=ld128, arrive=arrive, poll_at=poll_at, unpack2=unpack2,
                to_half_bits=to_half_bits, commit=bare("cp.async.commit_group;"),
                wait_all=bare("cp.async.wait_all;"), bare=bare)


def make_kernel(threads: int, slots: int, max_registers: int, max_k: int, relaxed: bool = True, xcache: str = "cg"):
    """The chain kernel for `threads` a block and `slots` 16-byte ring slots a thread (slots >= 1); x of each phase
    (up to max_k halves) staged in shared memory once a block after the barrier. relaxed: the barrier polls with
    ld.relaxed and takes one fence.acq_rel after (else every poll is an ld.acquire). xcache: how x is loaded ("cg":
    from L2; "ca": through L1, whose lines the barrier's acquire invalidates)."""
    from numba import cuda, float32, uint32

    f = _intrinsics()
    cp_async16, arrive = f["cp_async16"], f["arrive"]
    ldx = f["ld128"](xcache)
    poll = f["poll_at"]("relaxed" if relaxed else "acquire")
    fence = f["bare"]("fence.acq_rel.gpu;" if relaxed else "")
    unpack2, to_half_bits, commit, wait_all = f["unpack2"], f["to_half_bits"], f["commit"], f["wait_all"]
    wait_oldest = f["bare"]("cp.async.wait_group %d;" % (slots - 1))
    T, S, WPB = threads, slots, threads // 32
    RING = S * T * 4
    XW = max_k // 2

    @cuda.jit(device=True, inline=True)
    def first_phase(ph, p, warp, nwarp):
        """The first phase from p on with a column for this warp: (p, column, its N, nv, vpl, weight offset);
        p = P past the end."""
        while p < ph.shape[0]:
            c = (warp - ph[p, ROT]) % nwarp
            if c < ph[p, N_COL]:
                return p, c, ph[p, N_COL], ph[p, NV], ph[p, VPL], ph[p, W_OFF]
            p += 1
        return p, 0, 0, 0, 0, 0

    @cuda.jit(device=True, inline=True)
    def issue(W, ph, ring, at, lane, warp, nwarp, ip, ic, ij, i_n, i_nv, i_vpl, i_w):
        """The cursor's vector (if any) into the ring's words at..at+3, one commit group (empty past the end or for
        a lane past K), and the cursor advanced: (phase, column, vector round, and the phase's N, nv, vpl, weight
        offset)."""
        if ip < ph.shape[0]:
            v = lane + ij * 32
            if v < i_nv:
                cp_async16(ring, at, W, i_w + (ic * i_nv + v) * 4)
            ij += 1
            if ij == i_vpl:
                ij = 0
                ic += nwarp
                if ic >= i_n:
                    ip, ic, i_n, i_nv, i_vpl, i_w = first_phase(ph, ip + 1, warp, nwarp)
        commit()
        return ip, ic, ij, i_n, i_nv, i_vpl, i_w

    @cuda.jit(max_registers=max_registers)
    def chain(W, ph, act, ctr, err):
        tid = cuda.threadIdx.x
        lane = tid & 31
        nblk = cuda.gridDim.x
        nwarp = nblk * WPB
        warp = cuda.blockIdx.x * WPB + (tid >> 5)
        ring = cuda.shared.array(RING, uint32, alignment=16)
        xs = cuda.shared.array(XW, uint32, alignment=16)
        nph = ph.shape[0]
        # the issue cursor: phase ip, column ic, vector round ij, with ip's N, nv, vpl, weight offset in registers
        ip, ic, i_n, i_nv, i_vpl, i_w = first_phase(ph, 0, warp, nwarp)
        ij = 0
        cons = 0
        for it in range(S):
            # the first S vectors of the thread's stream, one slot each
            ip, ic, ij, i_n, i_nv, i_vpl, i_w = issue(W, ph, ring, (it * T + tid) * 4, lane, warp, nwarp,
                                                      ip, ic, ij, i_n, i_nv, i_vpl, i_w)
        for p in range(nph):
            if p > 0:
                cuda.syncthreads()
                if tid == 0:
                    arrive(ctr, 0)
                    target = p * nblk
                    spins = 0
                    while poll(ctr, 0) < target:
                        spins += 1
                        if spins > (1 << 24):
                            err[0] = 1
                            break
                    fence()
                cuda.syncthreads()
            n = ph[p, N_COL]
            nv = ph[p, NV]
            vpl = ph[p, VPL]
            xoff = ph[p, X_OFF]
            yoff = ph[p, Y_OFF]
            c = (warp - ph[p, ROT]) % nwarp
            for i in range(tid, nv, T):
                x0, x1, x2, x3 = ldx(act, xoff + i * 8)
                xs[i * 4] = x0
                xs[i * 4 + 1] = x1
                xs[i * 4 + 2] = x2
                xs[i * 4 + 3] = x3
            cuda.syncthreads()
            while c < n:
                acc = float32(0.0)
                for j in range(vpl):
                    wait_oldest()
                    slot = cons % S
                    base = (slot * T + tid) * 4
                    w0 = ring[base]
                    w1 = ring[base + 1]
                    w2 = ring[base + 2]
                    w3 = ring[base + 3]
                    v = lane + j * 32
                    if v < nv:
                        a0, a1 = unpack2(w0)
                        b0, b1 = unpack2(xs[v * 4])
                        acc += a0 * b0 + a1 * b1
                        a0, a1 = unpack2(w1)
                        b0, b1 = unpack2(xs[v * 4 + 1])
                        acc += a0 * b0 + a1 * b1
                        a0, a1 = unpack2(w2)
                        b0, b1 = unpack2(xs[v * 4 + 2])
                        acc += a0 * b0 + a1 * b1
                        a0, a1 = unpack2(w3)
                        b0, b1 = unpack2(xs[v * 4 + 3])
                        acc += a0 * b0 + a1 * b1
                    # refill the slot just read with the cursor's vector
                    ip, ic, ij, i_n, i_nv, i_vpl, i_w = issue(W, ph, ring, base, lane, warp, nwarp,
                                                              ip, ic, ij, i_n, i_nv, i_vpl, i_w)
                    cons += 1
                for off in (16, 8, 4, 2, 1):
                    acc += cuda.shfl_down_sync(0xFFFFFFFF, acc, off)
                if lane == 0:
                    act[yoff + c] = to_half_bits(acc)
                c += nwarp
        wait_all()

    return chain


def build(hidden: int, layers: int, nwarp: int, seed: int = 0, empty: bool = False):
    """(W words, phase table, activations, per-phase (N, K, w offset in halves, x offset, y offset)).
    Activations: one buffer a phase (distinct: no line is read before this launch writes it) plus the input."""
    import cupy
    E = hidden
    shapes = [(3 * E, E), (E, E), (4 * E, E), (E, 4 * E)] * layers   # (N, K) per phase
    maxd = 4 * E
    P = len(shapes)
    ph = np.zeros((P, 8), np.int64)
    total, rot, meta = 0, 0, []
    for p, (N, K) in enumerate(shapes):
        n = 0 if empty else N
        K = 8 if empty else K
        xoff = P * maxd if p == 0 else (p - 1) * maxd
        ph[p] = (total // 2, n, K, xoff, p * maxd, rot % nwarp, -(-(K // 8) // 32), K // 8)
        meta.append((N, K, total, xoff, p * maxd))
        total += 0 if empty else N * K
        rot += n
    rng = cupy.random.default_rng(seed)
    W = cupy.empty(max(total, 8), cupy.float16)
    for (N, K, off, _, _) in meta:
        if not empty:
            W[off:off + N * K] = (rng.standard_normal(N * K, dtype=cupy.float32) / np.sqrt(K)).astype(cupy.float16)
    act = cupy.zeros((P + 1) * maxd, cupy.float16)
    act[P * maxd:P * maxd + E] = (rng.standard_normal(E, dtype=cupy.float32) + 0.1).astype(cupy.float16)
    return W.view(cupy.uint32), cupy.asarray(ph), act, meta, total * 2


def check(W32, act, meta) -> float:
    """Largest |y - W x| / max |W x| over the phases, x each phase's input as the kernel stored it."""
    import cupy
    W = W32.view(cupy.float16)
    worst = 0.0
    for (N, K, off, xoff, yoff) in meta:
        w = W[off:off + N * K].reshape(N, K).astype(cupy.float32)
        ref = w @ act[xoff:xoff + K].astype(cupy.float32)
        got = act[yoff:yoff + N].astype(cupy.float32)
        worst = max(worst, float(cupy.abs(got - ref).max() / cupy.abs(ref).max()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1600)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--configs", nargs="*", default=["256,4,12", "128,8,12", "256,4,6", "256,4,1"],
                    help="threads a block, blocks an SM, ring slots a thread")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--barriers", action="store_true")
    ap.add_argument("--xcache", default="cg", choices=["cg", "ca"], help="x's loads: from L2 or through L1")
    ap.add_argument("--acquire", action="store_true", help="poll the barrier with ld.acquire (default: relaxed + fence)")
    args = ap.parse_args(argv)
    import cupy
    from bench_decode import copy_bandwidth

    nsm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    bw = copy_bandwidth()
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{name}: {nsm} SMs, copy bandwidth {bw / 1e12:.2f} TB/s; hidden {args.hidden}, {args.layers} layers")
    for cfg in args.configs:
        T, B, S = (int(v) for v in cfg.split(","))
        regs = min(255, (65536 // (T * B)) // 8 * 8)
        kern = make_kernel(T, S, regs, 4 * args.hidden, relaxed=not args.acquire, xcache=args.xcache)
        grid = nsm * B
        nwarp = grid * T // 32
        ctr = cupy.zeros(1, cupy.uint32)
        err = cupy.zeros(1, cupy.int32)
        # correctness on 2 layers
        W, ph, act, meta, _ = build(args.hidden, 2, nwarp, seed=1)
        kern[grid, T](W, ph, act.view(cupy.uint16), ctr, err)
        cupy.cuda.Device().synchronize()
        worst = check(W, act, meta)
        used = next(iter(kern.get_regs_per_thread().values()))
        rows = []
        for empty in ([False, True] if args.barriers else [False]):
            W, ph, act, meta, nbytes = build(args.hidden, args.layers, nwarp, empty=empty)
            a16 = act.view(cupy.uint16)
            times = []
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            for _ in range(args.repeats + 2):
                ctr.fill(0)
                start.record()
                kern[grid, T](W, ph, a16, ctr, err)
                end.record()
                end.synchronize()
                times.append(cupy.cuda.get_elapsed_time(start, end) * 1e3)
            t = statistics.median(times[2:]) / args.layers
            floor = nbytes / args.layers / bw * 1e6
            rows.append((empty, t, floor))
            del W, ph, act
        for empty, t, floor in rows:
            what = "barriers only" if empty else f"floor {floor:.2f} us, {t / floor:.2f}x"
            print(f"  threads {T} blocks/SM {B} slots {S} (regs {used}/{regs}): {t:.2f} us a layer ({what}); "
                  f"max rel err {worst:.1e}; timeout flag {int(err.get()[0])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
