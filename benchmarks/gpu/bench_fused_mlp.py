"""Probe (GPU): would a one-row decode step's MLP run nearer its weight floor as ONE kernel per layer, the down
projection split over K and added up by atomics, than as gemv_nk's two kernels (up + GELU, then down)?

    python benchmarks/gpu/bench_fused_mlp.py [--hidden 1024 --layers 24] [--configs 2,2 4,2 2,4]

Why: at one row each GEMV is a kernel boundary, and the down projection cannot start its arithmetic until every
column of the up projection is done (at GPT-2 medium's B1 the down GEMV's last blocks start only as the up GEMV
ends; benchmarks/gpu/NOTES.md, session 23). Here block j computes C adjacent columns of h = GELU(x W_up + b) (a
warp `cpw` columns, 32 lanes over K, shuffles), keeps them in shared memory and multiplies them at once by the C
matching rows of W_down ([F, H], rows contiguous): a partial y over all H outputs, which it adds into a float32
accumulator with atomics (the rows split into `rs` groups of threads, summed in shared memory first). Both
weight slices are loaded into registers before `griddepcontrol.wait`, so no block waits for another's columns and
the resident blocks' slices stream while the kernel before runs. The next layer reads the accumulator plus the down
bias, rounded to float16 (what gemv_nk's stored output is); each layer's accumulator is zeroed at the start of
the captured chain. The order of the atomics' additions is not fixed: results may differ in the last bit of the
float32 sums from run to run.

Both chains run `--layers` layers of distinct random float16 weights (`--same`: layer 0's for all, L2-resident)
captured as one CUDA graph with programmatic dependent launch (gemv_nk through the backend, as a decode step
launches it, its L2 prefetch of the next weight included; the fused chain's graph also zeroes the accumulators, one
small kernel). Prints us a layer, the ratio to the floor (the MLP weights' bytes at the measured copy bandwidth) and
the largest difference of a 2-layer chain's output from gemv_nk's, relative to gemv_nk's largest value. No
LayerNorm on either side. `--add` picks how a block adds its partial: `red4` (one red.global.add.v4.f32 per 4
values, sm_90), `atomic` (cuda.atomic.add per value) or `store` (plain 4-byte stores, 4x red4's transactions: wrong
sums, to see the time without the additions).

Measured (H200, session 24; benchmarks/gpu/NOTES.md): the idea lost. GPT-2 medium's width (1024, MLP 4096), us a
layer: gemv_nk's two kernels 6.46 (1.61x the floor); fused, best 10.2 (cpw 4, rs 2: 128 blocks, 168 registers),
12.2 (2,4: 128 blocks), 13.3-13.5 at 256 blocks, 21.1 at 512; per value atomics 18.8-54.6, plain stores 12.9-30.9
(those two from an earlier version whose loads carried a memory clobber; its red4 figures within 2.5%). GPT-2
small's width: 4.62-4.65 against 7.3-8.3 at best. With the weights L2-resident (`--same`) gemv_nk 5.11, fused 7.88
/ 11.62 (128 / 256 blocks): the gap to gemv_nk is not the weight stream. My reading (not proven): it grows with the
number of blocks updating each address (every block updates all H outputs; 24-31 ns a block from 128 to 256 to
512 blocks, though the columns a warp change along that series too), updates to one L2 line from many SMs being
applied one after another (plain stores grew too). A reduction among a thread block cluster's blocks in
distributed shared memory first (8 blocks a cluster: 8x fewer updates an address) would be the next variant; the
backend's launches set no cluster dimensions today. Kept as the probe.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def kernel_source(H: int, F: int, cpw: int, rs: int, add: str = "red4") -> tuple[str, int, int]:
    """(source of `kernel`, threads, columns a block) for hidden H, MLP width F, cpw columns a warp, the down rows
    split over rs thread groups. Register names are spelled out (the templates' way: no local arrays)."""
    nv = H // 8                       # 16-byte vectors of a row
    threads = nv * rs
    if H % 8 or threads % 32:
        raise ValueError(f"hidden {H} x rs {rs}: the threads ({threads}) must be whole warps")
    warps = threads // 32
    C = warps * cpw                   # up columns = down rows of a block
    if F % C or C % rs:
        raise ValueError(f"F {F} must be whole blocks of {C} columns, and {C} rows split over rs {rs} groups")
    vpl = -(-nv // 32)
    per = C // rs
    L = []
    a = L.append
    a("def kernel(xin, bprev, w_up, b_up, w_dn, acc_out):")
    a("    _pdl_launch()")
    a("    tid = cuda.threadIdx.x")
    a("    lane = tid % 32")
    a("    warp = tid // 32")
    a(f"    c0 = cuda.blockIdx.x * {C}")
    for i in range(vpl):
        a(f"    vv{i} = min(lane + {32 * i}, {nv - 1})")
    for j in range(cpw):
        a(f"    col{j} = c0 + warp * {cpw} + {j}")
        for i in range(vpl):
            a(f"    u{j}_{i}_0, u{j}_{i}_1, u{j}_{i}_2, u{j}_{i}_3 = _ld128(w_up, col{j} * {H} + vv{i} * 8)")
    a(f"    cv = tid % {nv}")
    a(f"    rg = tid // {nv}")
    for i in range(per):
        a(f"    d{i}_0, d{i}_1, d{i}_2, d{i}_3 = _ld128(w_dn, (c0 + rg + {rs * i}) * {H} + cv * 8)")
    a("    _pdl_wait()")
    a(f"    sh = cuda.shared.array({C}, float32)")
    if rs > 1:
        a(f"    part = cuda.shared.array(({rs - 1}, {H}), float32)")
    for i in range(vpl):
        for e in range(8):
            a(f"    x{i}_{e} = _r16(xin[vv{i} * 8 + {e}] + bprev[vv{i} * 8 + {e}])")
    for j in range(cpw):
        a("    s = float32(0.0)")
        for i in range(vpl):
            ind = "    "
            if (i + 1) * 32 > nv:
                a(f"    if lane + {32 * i} < {nv}:")
                ind = "        "
            for q in range(4):
                a(f"{ind}lo, hi = _unpack2(u{j}_{i}_{q})")
                a(f"{ind}s += x{i}_{2 * q} * lo + x{i}_{2 * q + 1} * hi")
        for o in (16, 8, 4, 2, 1):
            a(f"    s += cuda.shfl_xor_sync(0xFFFFFFFF, s, {o})")
        a("    if lane == 0:")
        a(f"        z = s + b_up[col{j}]")
        a(f"        sh[warp * {cpw} + {j}] = _r16(float32(0.5) * z * (float32(1.0) + math.tanh("
          f"float32(0.7978845608028654) * (z + float32(0.044715) * z * z * z))))")
    a("    cuda.syncthreads()")
    for e in range(8):
        a(f"    y{e} = float32(0.0)")
    for i in range(per):
        a(f"    hr = sh[rg + {rs * i}]")
        for q in range(4):
            a(f"    lo, hi = _unpack2(d{i}_{q})")
            a(f"    y{2 * q} += hr * lo")
            a(f"    y{2 * q + 1} += hr * hi")
    if rs > 1:
        a("    if rg > 0:")
        for e in range(8):
            a(f"        part[rg - 1, cv * 8 + {e}] = y{e}")
        a("    cuda.syncthreads()")
        a("    if rg == 0:")
        for e in range(8):
            for r in range(rs - 1):
                a(f"        y{e} += part[{r}, cv * 8 + {e}]")
        ind = "        "
    else:
        ind = "    "
    if add == "red4":
        a(f"{ind}_red4(acc_out, cv * 8, y0, y1, y2, y3)")
        a(f"{ind}_red4(acc_out, cv * 8 + 4, y4, y5, y6, y7)")
    for e in range(8):
        if add == "atomic":
            a(f"{ind}cuda.atomic.add(acc_out, cv * 8 + {e}, y{e})")
        elif add == "store":
            a(f"{ind}acc_out[cv * 8 + {e}] = y{e}")
    return "\n".join(L) + "\n", threads, C


def make_kernel(H, F, cpw, rs, add="red4"):
    import math

    from bench_persistent import _intrinsics
    from llvmlite import ir
    from numba import cuda, float32
    from numba.core import types
    from numba.core.extending import intrinsic

    f = _intrinsics()
    addr = f["addr"]        # the global address of an array's element, as an i64

    @intrinsic
    def _r16(typingctx, x):
        """x rounded to float16 and back (cvt.rn)."""
        sig = types.float32(x)

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], types.float32)
            fty = ir.FunctionType(ir.FloatType(), [ir.FloatType()])
            return builder.call(ir.InlineAsm(fty, "{\n.reg .f16 h;\ncvt.rn.f16.f32 h, $1;\ncvt.f32.f16 $0, h;\n}",
                                             "=f,f"), [v])
        return sig, codegen

    @intrinsic
    def _red4(typingctx, arr, idx, a0, a1, a2, a3):
        """arr[idx .. idx + 3] += (a0, a1, a2, a3): one red.global.add.v4.f32 (sm_90), 16-byte aligned."""
        sig = types.none(arr, idx, a0, a1, a2, a3)

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            p = addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            vals = [context.cast(builder, v, t, types.float32) for v, t in zip(args[2:], sig.args[2:])]
            fty = ir.FunctionType(ir.VoidType(), [i64] + [ir.FloatType()] * 4)
            asm = ir.InlineAsm(fty, "{\n.reg .u64 g;\ncvta.to.global.u64 g, $0;\n"
                                    "red.global.add.v4.f32 [g], {$1, $2, $3, $4};\n}", "l,f,f,f,f,~{memory}",
                               side_effect=True)
            builder.call(asm, [p] + vals)
            return context.get_dummy_value()
        return sig, codegen

    @intrinsic
    def _ld128(typingctx, arr, idx):
        """The 4 words at element idx of arr: one ld.global.v4.u32 (no memory clobber, as the templates' loads; a
        side effect, as theirs with programmatic launch, though every one here sits above griddepcontrol.wait)."""
        sig = types.UniTuple(types.uint32, 4)(arr, idx)

        def codegen(context, builder, sig, args):
            fty = ir.FunctionType(ir.LiteralStructType([ir.IntType(32)] * 4), [ir.IntType(64)])
            asm = ir.InlineAsm(fty, "{\n.reg .u64 g;\ncvta.to.global.u64 g, $4;\nld.global.v4.u32 {$0, $1, $2, $3}, "
                                    "[g];\n}", "=r,=r,=r,=r,l", side_effect=True)
            words = builder.call(asm, [addr(context, builder, sig.args[0], args[0], sig.args[1], args[1])])
            return context.make_tuple(builder, sig.return_type, [builder.extract_value(words, j) for j in range(4)])
        return sig, codegen

    src, threads, C = kernel_source(H, F, cpw, rs, add)
    ns = dict(cuda=cuda, float32=float32, math=math, _r16=_r16, _red4=_red4, _ld128=_ld128, _unpack2=f["unpack2"],
              _pdl_launch=f["bare"]("griddepcontrol.launch_dependents;"), _pdl_wait=f["bare"]("griddepcontrol.wait;"))
    exec(compile(src, f"<fused_mlp H{H} cpw{cpw} rs{rs}>", "exec"), ns)
    return cuda.jit(ns["kernel"]), threads, C


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--configs", nargs="*", default=["2,2", "4,2", "1,2", "2,4"],
                    help="fused variants: columns a warp, row groups (cpw,rs)")
    ap.add_argument("--add", nargs="*", default=["red4", "atomic"],
                    help="how a block adds its partial y: red4 (red.global.add.v4.f32), atomic (cuda.atomic.add "
                         "per value), store (plain 4-byte stores: wrong sums, the time without the additions)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--same", action="store_true",
                    help="every layer reads layer 0's weights (L2-resident): the chains' time without HBM")
    args = ap.parse_args(argv)
    import cupy
    from bench_decode import copy_bandwidth
    from bench_gemv import timed
    from eetjit.backends.cuda import CudaBackend
    from eetjit.ir import Graph

    be = CudaBackend("float16", verbose=False)
    dev = be.dev
    H, L = args.hidden, args.layers
    F = 4 * H
    rng = np.random.default_rng(0)
    g = Graph("bench-fused-mlp")
    ups, dns, raw = [], [], []
    for layer in range(L):
        Wu = (rng.standard_normal((H, F)) * 0.02).astype(np.float32)
        bu = (rng.standard_normal(F) * 0.1).astype(np.float32)
        Wd = (rng.standard_normal((F, H)) * 0.02).astype(np.float32)
        bd = (rng.standard_normal(H) * 0.1).astype(np.float32)
        raw.append((Wu, bu, Wd, bd))
        for W, b, K, act, ops in ((Wu, bu, H, "gelu_tanh", ups), (Wd, bd, F, "none", dns)):
            nm = f"{'up' if ops is ups else 'dn'}{layer}"
            x = g.value(f"{nm}.x", np.float32, (1, None, K))
            node = g.add_node("Linear", [x, g.constant(W, f"{nm}.w"), g.constant(b, f"{nm}.b")], 1,
                              {"activation": act}, domain="eet")
            ops.append(be.prepare(node, g))
    be.gemv_max_m = 1
    bw = copy_bandwidth()
    floor = 2 * H * F * 2 / bw * 1e6
    print(f"card: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; copy {bw / 1e12:.2f} TB/s; PDL "
          f"{'on' if dev.pdl else 'off'}; hidden {H}, MLP {F}, {L} layers; floor {floor:.2f} us a layer", flush=True)
    x0 = rng.standard_normal(H).astype(np.float16)
    xs = [dev.upload(x0.reshape(1, 1, H))] + [be.empty((1, 1, H)) for _ in range(L)]
    hs = [be.empty((1, 1, F)) for _ in range(L)]

    wl = (lambda layer: 0) if args.same else (lambda layer: layer)     # the weights a layer reads

    def base(n=L):
        for layer in range(n):
            ups[wl(layer)]([xs[layer], None, None], [hs[layer]])
            dns[wl(layer)]([hs[layer], None, None], [xs[layer + 1]])
    t = timed(dev, base, args.repeats) / L
    print(f"  gemv_nk x2           {t:6.2f} us a layer ({t / floor:.2f}x floor)", flush=True)
    base(2)
    ref = be.to_host(xs[2]).astype(np.float32).reshape(H)

    w_up = [cupy.asarray(np.ascontiguousarray(Wu.T).astype(np.float16)) for Wu, _, _, _ in raw]
    b_up = [cupy.asarray(bu) for _, bu, _, _ in raw]
    w_dn = [cupy.asarray(Wd.astype(np.float16)) for _, _, Wd, _ in raw]
    # layer l's input is the accumulator plus the down bias of the weights layer l - 1 read
    b_dn = [cupy.zeros(H, cupy.float32)] + [cupy.asarray(raw[wl(layer)][3]) for layer in range(L)]
    accs = cupy.zeros((L + 1, H), cupy.float32)
    accs[0] = cupy.asarray(x0.astype(np.float32))
    cupy.cuda.Device().synchronize()       # the above on CuPy's stream, the launches on the backend's
    for cfg, add in ((c, a) for c in args.configs for a in args.add):
        cpw, rs = (int(v) for v in cfg.split(","))
        label = f"{cfg} {add}"
        try:
            kern, threads, C = make_kernel(H, F, cpw, rs, add)
        except ValueError as e:
            print(f"  fused {label:14s} skipped: {e}", flush=True)
            continue

        def fused(n=L):
            with dev.stream:
                accs[1:].fill(0)
            for layer in range(n):
                w = wl(layer)
                dev.launch(kern, F // C, threads, accs[layer], b_dn[layer], w_up[w], b_up[w], w_dn[w],
                           accs[layer + 1])
        try:
            t = timed(dev, fused, args.repeats) / L
        except Exception as e:
            print(f"  fused {label:14s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        fused(2)
        dev.stream.synchronize()
        out = (accs[2] + b_dn[2]).astype(cupy.float16).get().astype(np.float32)
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        regs = next(iter(kern.get_regs_per_thread().values()))
        print(f"  fused {label:14s} {t:6.2f} us a layer ({t / floor:.2f}x floor); {F // C} blocks of {threads}, "
              f"{regs} registers; 2-layer max rel diff {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
