"""The decode step's GEMMs alone (GPU): the four projections of a GPT-2-style layer (q/k/v, attention output,
MLP up with tanh-GELU, MLP down) for `--layers` layers of distinct random float16 weights, at M rows (a batch's
decode step), each variant captured as one CUDA graph per projection (a launch per layer) and replayed.

    python benchmarks/gpu/bench_gemv.py [--hidden 768 --layers 12 --rows 8,32 --tunes 4,12,4 8,12,4]
                                        [--vocab 50257 --argmax-tunes 512,32 256,8] [--nk-vpl 1000 8 4]
                                        [--tc-tunes 2,4,4 1,8,4] [--same]

Variants: `cublas` (cuBLASLt with its fused epilogue, the peer), `gemv_nk` at one row (with `--nk-vpl`, once per
limit on a lane's weight vectors before a column takes more lanes), `gemv_tc` (tensor cores over the same [N, K]
copy) at up to 32 rows with each `--tc-tunes` tile, and `gemv_mma.py.j2` with
each tune "vw,warps,steps" (EETJIT_GEMV_MMA_TUNE's meaning). Prints us per GEMM for each projection, the layer's
sum, its floor (the weights' bytes at the measured device-to-device copy bandwidth) and the largest relative
difference from cuBLASLt's result. With `--vocab V`, also the LM head [hidden, V] (one GEMM; cuBLASLt pads V to a
multiple of 64 and copies the logits out, gemv_mma writes them) and the greedy argmax over its logits at each
"threads,splits" of `--argmax-tunes` (EETJIT_ARGMAX_TUNE's meaning), each captured alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--rows", default="8,32", help="M values, comma-separated")
    ap.add_argument("--tunes", nargs="*", default=["4,12,4"], help="gemv_mma tiles: vw,warps,steps (default: the GPU tile)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--same", action="store_true",
                    help="every launch reads layer 0's weights (L2-resident where they fit): against the default "
                         "(distinct weights, read from memory) it bounds what prefetching into L2 could gain")
    ap.add_argument("--vocab", type=int, default=0, help="also time an LM head of this width and the argmax")
    ap.add_argument("--argmax-tunes", nargs="*", default=[], help="argmax variants: threads,splits")
    ap.add_argument("--tc-tunes", nargs="*", default=[],
                    help="gemv_tc variants at up to 32 rows: ct,warps,unroll (EETJIT_GEMV_TC_TUNE's meaning)")
    ap.add_argument("--nk-vpl", nargs="*", type=int, default=[],
                    help="gemv_nk variants at one row: vectors a lane before a column widens (EETJIT_GEMV_NK_MAX_VPL)")
    ap.add_argument("--nk-cpg", nargs="*", type=int, default=[],
                    help="gemv_nk variants at one row: columns a lane group (EETJIT_GEMV_NK_CPG; 0: the rule)")
    args = ap.parse_args(argv)
    import cupy
    from bench_decode import copy_bandwidth
    from eetjit.backends.cuda import CudaBackend
    from eetjit.ir import Graph

    be = CudaBackend("float16", verbose=False)
    dev = be.dev
    E = args.hidden
    projections = [("qkv", E, 3 * E, "none"), ("out", E, E, "none"), ("up", E, 4 * E, "gelu_tanh"),
                   ("down", 4 * E, E, "none")]
    rng = np.random.default_rng(0)
    g = Graph("bench-gemv")
    ops = {}
    for name, K, N, act in projections:
        ops[name] = []
        for layer in range(args.layers):
            W = g.constant((rng.standard_normal((K, N)) * 0.02).astype(np.float32), f"{name}{layer}.w")
            b = g.constant((rng.standard_normal(N) * 0.1).astype(np.float32), f"{name}{layer}.b")
            x = g.value(f"{name}{layer}.x", np.float32, (1, None, K))
            node = g.add_node("Linear", [x, W, b], 1, {"activation": act}, domain="eet")
            ops[name].append(be.prepare(node, g))
    g_head = None
    if args.vocab:
        W = g.constant((rng.standard_normal((E, args.vocab)) * 0.02).astype(np.float32), "head.w")
        x = g.value("head.x", np.float32, (1, None, E))
        g_head = be.prepare(g.add_node("Linear", [x, W, None], 1, {}, domain="eet"), g)
    bw = copy_bandwidth()
    print(f"card: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; copy {bw / 1e12:.2f} TB/s; "
          f"PDL {'on' if dev.pdl else 'off'}; hidden {E}, {args.layers} layers"
          f"{' (all reading layer 0: --same)' if args.same else ''}", flush=True)
    variants = [("cublas", None)] + [(f"mma {t}", t) for t in args.tunes]
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    for M in (int(m) for m in args.rows.split(",")):
        xs = {n: be.dev.upload(rng.standard_normal((1, M, K)).astype(np.float16)) for n, K, _, _ in projections}
        ys = {n: be.empty((1, M, N)) for n, _, N, _ in projections}
        floor = sum(K * N * 2 for _, K, N, _ in projections) / bw * 1e6
        print(f"\nM = {M}: us per GEMM ({', '.join(n for n, *_ in projections)}), layer sum, floor {floor:.2f} us")
        ref = None
        vpl, cpg = be.gemv_nk_max_vpl, be.gemv_nk_cpg
        nk = ([(f"gemv_nk vpl {v}", ("nk", v, cpg)) for v in args.nk_vpl]
              + [(f"gemv_nk cpg {c}", ("nk", vpl, c)) for c in args.nk_cpg]) or [("gemv_nk", ("nk", vpl, cpg))]
        tc = [(f"gemv_tc {v}", ("tc", v)) for v in args.tc_tunes]
        for label, tune in variants + (nk if M == 1 else []) + (tc if M <= 32 else []):
            _use(be, M, tune)
            times, outs = [], {}
            try:
                for name, *_ in projections:
                    def run(name=name):
                        for op in ops[name][:1] * args.layers if args.same else ops[name]:
                            op([xs[name], None, None], [ys[name]])
                    run()
                    outs[name] = be.to_host(ys[name]).astype(np.float32)
                    graph = dev.capture(run)
                    dev.replay(graph)
                    start.record(dev.stream)
                    for _ in range(args.repeats):
                        dev.replay(graph)
                    end.record(dev.stream)
                    end.synchronize()
                    times.append(cupy.cuda.get_elapsed_time(start, end) * 1e3 / args.repeats / args.layers)
            except Exception as e:     # a tile that does not compile or fit: reported, the others go on
                print(f"  {label:14s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            if ref is None:
                ref = outs
            err = max(float(np.abs(outs[n] - ref[n]).max() / np.abs(ref[n]).max()) for n in outs)
            cells = " ".join(f"{t:6.2f}" for t in times)
            print(f"  {label:14s} {cells}  sum {sum(times):6.2f} ({sum(times) / floor:.1f}x floor)  "
                  f"max rel diff {err:.1e}", flush=True)
        if args.vocab:
            head(be, g_head, M, args, rng, bw)
    return 0


def _use(be, M, tune) -> None:
    """Route M-row GEMMs to one variant: None cuBLASLt, "vw,warps,steps" a gemv_mma tile, ("nk", vpl limit,
    columns a group) gemv_nk, ("tc", "ct,warps,unroll") a gemv_tc tile."""
    kind = tune[0] if isinstance(tune, tuple) else None
    be.gemv_max_m = M if kind else 0
    be.gemv_mma_max_m = M if tune is not None and not kind else 0
    be.gemv_tc = kind == "tc"
    if kind == "tc":
        be.gemv_tc_tune = dict(zip(("ct", "warps", "unroll"), (int(v) for v in tune[1].split(","))))
    elif kind == "nk":
        be.gemv_nk_max_vpl, be.gemv_nk_cpg = tune[1], tune[2]
    elif tune is not None:
        be.gemv_mma_tune = dict(zip(("vw", "warps", "steps"), (int(v) for v in tune.split(","))))
        be.gemv_mma_wide = None         # the tile as given, at every width


def timed(dev, fn, repeats) -> float:
    """us per replay of fn captured as one graph."""
    import cupy
    fn()
    graph = dev.capture(fn)
    dev.replay(graph)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(dev.stream)
    for _ in range(repeats):
        dev.replay(graph)
    end.record(dev.stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / repeats


def head(be, op, M, args, rng, bw) -> None:
    """The LM head at M rows on cuBLASLt, each gemv_mma tile, gemv_nk (one row) and each gemv_tc tile (up to 32
    rows; both over an [N, K] copy of the weight), then the argmax variants over its logits."""
    E, V = args.hidden, args.vocab
    x = be.dev.upload(rng.standard_normal((1, M, E)).astype(np.float16))
    y = be.empty((1, M, V))
    tokens = be.zeros((M,), np.int64)
    print(f"  LM head [{E} x {V}] at M = {M}, floor {E * V * 2 / bw * 1e6:.2f} us:", flush=True)
    ref = None
    nk = [("gemv_nk", ("nk", be.gemv_nk_max_vpl, be.gemv_nk_cpg))] if M == 1 else []
    tc = [(f"gemv_tc {t}", ("tc", t)) for t in args.tc_tunes] if M <= 32 else []
    for label, tune in [("cublas", None)] + [(f"mma {t}", t) for t in args.tunes] + nk + tc:
        _use(be, M, tune)
        be.gemv_max_n = (1 << 30) if tune else 16384
        try:
            t = timed(be.dev, lambda: op([x, None, None], [y]), args.repeats)
        except Exception as e:
            print(f"    {label:14s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        out = be.to_host(y).astype(np.float32)
        ref = out if ref is None else ref
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"    {label:14s} {t:7.2f} us  max rel diff {err:.1e}", flush=True)
    want = np.argmax(be.to_host(y).reshape(M, V), axis=1)
    for tune in args.argmax_tunes or [f"{be.argmax_tune['threads']},{be.argmax_tune['splits']}"]:
        be.argmax_tune = dict(zip(("threads", "splits"), (int(v) for v in tune.split(","))))
        t = timed(be.dev, lambda: be.greedy_tokens(y.reshape(M, V), tokens), args.repeats)
        ok = np.array_equal(be.to_host(tokens), want)
        print(f"    argmax {tune:9s} {t:7.2f} us  {'tokens equal NumPy' if ok else 'TOKENS DIFFER'}", flush=True)
    be.gemv_max_n, be.gemv_tc = 16384, False


if __name__ == "__main__":
    sys.exit(main())
