"""Probe (GPU): where a decode step's time goes inside its kernels. Every block of the step's gemv_nk, gemv_mma and
attention_vec launches writes `%globaltimer` stamps (thread 0): its start, the return of its programmatic-launch
wait, and at its end; attention_vec also when q has arrived, after its loop over the cache's tiles, just before
`attention_finish` (after the step's own column and the warp exchange merge) and, inside it, after the groups'
merge and after the split count (the row's last block merges after that); gemv_mma after warp 0's last mma, after
the warps' tiles are added in shared memory and, with k ranges over blocks, after its partials are stored.

    python benchmarks/gpu/stamp_probe.py --model MODEL_DIR/gpt2-ts17-eager.onnx [--new 128] [--max-seq-len N]
        [--batch B --context C]

At one row it prints the per-layer report below; at every batch a table of a layer's five kernels (q/k/v,
attention, output projection, up, down): each stamp's first, median and last block in us after the previous
kernel's last block ended (medians over the layers), and the blocks that started only after that end. Session 26
(H200, GPT-2 small B32 x 512): the output projection's end came 2.5 us after its warps' tiles were added (its
epilogue loaded each output's residual after storing the one before), attention ended 3.6-3.8 us after its last
tiles.

How: the templates are copied to a temporary folder and the copies edited (each edit anchored on the template's
text: a template that no longer has the anchor stops the probe with its name), then used through
EETJIT_TEMPLATES_DIR; a wrapper of Device.launch appends a slice of one int64 stamp array to each launch of those
three kernels (the same slice for the same arguments, so the captured graph writes where the eager run did).
Cubins are launched through Numba (EETJIT_DIRECT_LAUNCH=0). After a greedy generate of `--batch` x `--context` +
`--new` (default B1 x 64), the last captured step's stamps are read back: at one row, per layer, each stamp's
earliest or latest block, in us after the q/k/v GEMV's last block ended (medians, min and max over the layers). The stamps add a store and a barrier a
block, so the figures are differences within a run, not kernel times to compare with other runs.

Measured (H200; benchmarks/gpu/NOTES.md). Session 22, a cache of 136 columns (3 splits, every one taking part):
GPT-2 medium's attention waited until 0.8 us after the q/k/v GEMV's last block, ended its loops at 2.85 and its
last block at 6.1 (small: 0.66, 2.75, 6.08). Session 23, run.sh's capacity (--max-seq-len 776; the default here,
bench_more.py's, runs the same scheme: rows of up to 256 columns in one block), GPT-2 small before that session's
changes: wait +0.56, q +2.24, tiles done +4.26, the step's own column folded +4.74, groups merged +5.47, end +5.58;
the layer (to the next q/k/v GEMV's end) 15.0 us. (The "folded" stamp sits just before `attention_finish`:
since the warp exchange merge it comes after the exchanges, so compare tiles-done -> merged across versions.) The
report also has the MLP's two GEMVs and the next q/k/v GEMV (with their last block's start: a block that starts
late loads its weight late).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

INSTRUMENTED = ("gemv_nk", "gemv_mma", "attention_vec")
# stamp slots; gemv_nk writes start, wait, end; attention_vec's "loop" is just before attention_finish (after the loop,
# the step's own column and the warp exchange merge); gemv_mma's "tiles" is warp 0's last mma issued and returned,
# its "loop" the warps' tiles added in shared memory, "merged" its k range's partials stored (ksplit > 1)
COLUMNS = ("start", "wait", "loop", "merged", "counted", "end", "q", "tiles")

_TIMER = '''
{% if sim %}
def _gtime():
    return 0
{% else %}
from llvmlite import ir as _gt_ir
from numba.core import types as _gt_types
from numba.core.extending import intrinsic as _gt_intrinsic


@_gt_intrinsic
def _gtime(typingctx):
    sig = _gt_types.int64()

    def codegen(context, builder, sig, args):
        fty = _gt_ir.FunctionType(_gt_ir.IntType(64), [])
        return builder.call(_gt_ir.InlineAsm(fty, "mov.u64 $0, %globaltimer;", "=l", side_effect=True), [])
    return sig, codegen
{% endif %}
'''


def _edit(path: Path, edits: list[tuple[str, str, int]]) -> None:
    """Replace each anchor (expected `count` times) in the template at path."""
    text = path.read_text()
    for anchor, new, count in edits:
        if text.count(anchor) != count:
            raise SystemExit(f"stamp_probe: {path.name} has {text.count(anchor)} of the anchor {anchor!r} "
                             f"(expected {count}): the template changed, update the probe's edits")
        text = text.replace(anchor, new)
    path.write_text(text)


def stamped_templates(dest: Path) -> Path:
    """A copy of the shipped templates with the stamps edited in; returns the folder for EETJIT_TEMPLATES_DIR."""
    shutil.copytree(ROOT / "templates", dest)
    cuda = dest / "cuda"
    stamp = "    if cuda.threadIdx.x == 0:\n        stamps[{blk}, {col}] = {val}\n"
    _edit(cuda / "gemv_nk.py.j2", [
        ("{{ m.group_sum_fn(lanes, threads) }}\n", "{{ m.group_sum_fn(lanes, threads) }}\n" + _TIMER, 1),
        ("y_MN{{ pfa }}):", "y_MN{{ pfa }}, stamps):", 1),
        ("sum_MK{{ pfa }}):", "sum_MK{{ pfa }}, stamps):", 2),
        ("    {{ m.pdl_enter(wait=False) | indent(4) }}\n",
         "    {{ m.pdl_enter(wait=False) | indent(4) }}\n    gt0 = _gtime()\n", 3),
        ("    {{ m.pdl_wait() | indent(4) }}\n    red = cuda.shared",
         "    {{ m.pdl_wait() | indent(4) }}\n    gt1 = _gtime()\n    red = cuda.shared", 1),
    ])
    with open(cuda / "gemv_nk.py.j2", "a") as f:
        f.write("    cuda.syncthreads()\n" + stamp.format(blk="cuda.blockIdx.x", col=0, val="gt0")
                + "        stamps[cuda.blockIdx.x, 1] = gt1\n        stamps[cuda.blockIdx.x, 5] = _gtime()\n")
    mma = cuda / "gemv_mma.py.j2"
    text, n = re.subn(r"^(def kernel\(.*)\):$", r"\1, stamps):", mma.read_text(), flags=re.M)
    if n != 5:
        raise SystemExit(f"stamp_probe: gemv_mma.py.j2 has {n} kernel signatures (expected 5): update the probe")
    mma.write_text(text)
    sbm = "cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x"
    _edit(mma, [
        ("{{ m.mma_fns() }}\n", "{{ m.mma_fns() }}\n" + _TIMER, 1),
        ("    {{ m.pdl_enter(wait=False) | indent(4) }}\n",
         "    {{ m.pdl_enter(wait=False) | indent(4) }}\n    gt0 = _gtime()\n", 1),
        ("    {{ m.pdl_wait() | indent(4) }}\n", "    {{ m.pdl_wait() | indent(4) }}\n    gt1 = _gtime()\n", 1),
        ("    # tile (i, j) holds y^T at columns",
         "    if tid == 0 and c0_0[0] != float32(-7.7e33):\n        stamps[" + sbm + ", 7] = _gtime()\n"
         "    # tile (i, j) holds y^T at columns", 1),
        ("    # this thread's outputs q (unrolled",
         "    if tid == 0:\n        stamps[" + sbm + ", 0] = gt0\n        stamps[" + sbm + ", 1] = gt1\n"
         "        stamps[" + sbm + ", 2] = _gtime()\n    # this thread's outputs q (unrolled", 1),
        ("    {{ m.count_block(\"count_T\", \"ct\", ksplit - 1) | indent(4) }}\n    if last[0] == 0:\n        return\n",
         "    if tid == 0:\n        stamps[" + sbm + ", 3] = _gtime()\n"
         "    {{ m.count_block(\"count_T\", \"ct\", ksplit - 1) | indent(4) }}\n    if last[0] == 0:\n"
         "        if tid == 0:\n            stamps[" + sbm + ", 5] = _gtime()\n        return\n", 1),
    ])
    with open(mma, "a") as f:
        f.write("\n    cuda.syncthreads()\n    if tid == 0:\n        stamps[" + sbm + ", 5] = _gtime()\n")
    blk = "sb"
    _edit(cuda / "attention_vec.py.j2", [
        ("{% import \"_macros.j2\" as m with context %}",
         "{% set stamped = true %}\n{% import \"_macros.j2\" as m with context %}", 1),
        ("{{ m.group_sum_fn(lanes, threads) }}\n", "{{ m.group_sum_fn(lanes, threads) }}\n" + _TIMER, 1),
        ("count_R, k_BSY, v_BSY):", "count_R, k_BSY, v_BSY, stamps):", 1),
        ("    {{ m.pdl_enter(wait=not fused_write) | indent(4) }}\n",
         "    {{ m.pdl_enter(wait=not fused_write) | indent(4) }}\n    gt0 = _gtime()\n"
         "    sb = (cuda.blockIdx.z * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x\n", 1),
        ("{% if fused_write %}\n    {{ m.pdl_wait() | indent(4) }}\n",
         "{% if fused_write %}\n    {{ m.pdl_wait() | indent(4) }}\n    gt1 = _gtime()\n"
         + stamp.format(blk=blk, col=0, val="gt0") + "        stamps[sb, 1] = gt1\n", 1),
        # after q arrived (the stamp's branch reads it), and after the loop over the tiles (before the step's own
        # column is folded in)
        ("    m_run = NEG\n",
         "    if cuda.threadIdx.x == 0 and q0_0 != float32(-7.7e33):\n        stamps[sb, 6] = _gtime()\n"
         "    m_run = NEG\n", 1),
        ("{% if fused_write %}\n    if own_new:",
         "    if cuda.threadIdx.x == 0 and m_run != float32(7.7e33):\n        stamps[sb, 7] = _gtime()\n"
         "{% if fused_write %}\n    if own_new:", 1),
        ("    {{ m.attention_finish(heads, head_dim, slots, threads, split, single_cols, cl) | indent(4) }}",
         stamp.format(blk=blk, col=2, val="_gtime()")
         + "    {{ m.attention_finish(heads, head_dim, slots, threads, split, single_cols, cl) | indent(4) }}\n"
         + "    cuda.syncthreads()\n" + stamp.format(blk=blk, col=5, val="_gtime()").rstrip("\n"), 1),
    ])
    # inside the merge (only for the stamped attention_vec: attention.py.j2 shares the macro)
    _edit(cuda / "_macros.j2", [
        ("last = cuda.shared.array(1, int32)\nif n_act > 1:\n    row = bh * q_BSX.shape[1] + i\n"
         "    {{ count_block(\"count_R\", \"row\", \"n_act - 1\") | indent(4) }}\n",
         "{% if stamped is defined and stamped %}\nif tid == 0:\n    stamps[sb, 3] = _gtime()\n{% endif %}\n"
         "last = cuda.shared.array(1, int32)\nif n_act > 1:\n    row = bh * q_BSX.shape[1] + i\n"
         "    {{ count_block(\"count_R\", \"row\", \"n_act - 1\") | indent(4) }}\n"
         "{% if stamped is defined and stamped %}\n    if tid == 0:\n        stamps[sb, 4] = _gtime()\n{% endif %}\n",
         1),
        # the cluster merge: before and after its barrier
        ("_cluster_sync()\nif split == 0:\n",
         "{% if stamped is defined and stamped %}\nif tid == 0:\n    stamps[sb, 3] = _gtime()\n{% endif %}\n"
         "_cluster_sync()\n{% if stamped is defined and stamped %}\nif tid == 0:\n    stamps[sb, 4] = _gtime()\n"
         "{% endif %}\nif split == 0:\n", 1),
    ])
    return dest


def _install(state: dict) -> None:
    """Wrap CudaBackend.kernel (which kernel is which template) and Device.launch (the stamp slices)."""
    from eetjit.backends import cuda as C
    from eetjit.backends import cuda_device as CD
    ops, kernel, launch = state["ops"], C.CudaBackend.kernel, CD.Device.launch

    def kernel_(self, op, seq_bucket=None, **consts):
        fn = kernel(self, op, seq_bucket, **consts)
        ops[id(fn)] = op
        return fn

    def ptr(a):
        data = getattr(a, "data", None)
        return getattr(data, "ptr", None) or (a.ctypes.data if isinstance(a, np.ndarray) else repr(a))

    def launch_(self, kern, grid, block, *args, cluster=0):
        op = ops.get(id(kern), "?")
        key = (id(kern),) + tuple(ptr(a) for a in args)
        state["log"].append((op, key))
        if op in INSTRUMENTED:
            if state["pool"] is None:
                state["pool"] = self.zeros((400_000, len(COLUMNS)), np.int64)
            if key not in state["slots"]:
                blocks = int(np.prod(grid)) if isinstance(grid, tuple) else int(grid)
                state["slots"][key] = (state["off"], blocks)
                state["off"] += blocks
            off, blocks = state["slots"][key]
            args = args + (state["pool"][off:off + blocks],)
        return launch(self, kern, grid, block, *args, cluster=cluster)

    C.CudaBackend.kernel = kernel_
    CD.Device.launch = launch_


def _last_step(state: dict):
    """The last decode step's instrumented launches [(op, key)], and key -> the stamps of that launch's blocks."""
    log = state["log"]
    starts = [i for i, (op, _) in enumerate(log) if op == "embedding"]
    if not starts or state["pool"] is None:
        raise SystemExit("stamp_probe: no decode step was launched")
    pool = state["pool"]
    pool = pool.get() if hasattr(pool, "get") else np.asarray(pool)

    def stamps(key):
        off, blocks = state["slots"][key]
        s = pool[off:off + blocks]
        return s[s[:, 5] > 0]             # blocks that left early (idle splits) wrote no end
    return [(op, key) for op, key in log[starts[-1]:] if op in INSTRUMENTED], stamps


def report(state: dict) -> list[dict]:
    """Per layer (each attention_vec with the GEMVs before and after it), us after the q/k/v GEMV's last block."""
    step, stamps = _last_step(state)
    rows = []
    for j, (op, key) in enumerate(step):
        if op != "attention_vec" or j == 0 or j + 1 >= len(step):
            continue
        q, a, o = stamps(step[j - 1][1]), stamps(key), stamps(step[j + 1][1])
        if not (len(q) and len(a) and len(o)):
            continue
        t = q[:, 5].max()
        row = {"q/k/v start": q[:, 0].min() - t, "q/k/v start (last)": q[:, 0].max() - t,
               "q/k/v wait": q[:, 1].min() - t,
               "attention start": a[:, 0].min() - t, "attention wait": a[:, 1].min() - t,
               "attention q arrived": a[:, 6].max() - t, "attention tiles done": a[:, 7].max() - t,
               "attention before merge": a[:, 2].max() - t, "groups merged": a[:, 3].max() - t}
        counted = a[a[:, 4] > 0]
        if len(counted):
            row["split counted (last)"] = counted[:, 4].max() - t
        row.update({"attention end": a[:, 5].max() - t, "out-proj start": o[:, 0].min() - t,
                    "out-proj start (last)": o[:, 0].max() - t, "out-proj wait": o[:, 1].min() - t,
                    "out-proj end": o[:, 5].max() - t})
        # the layer's later GEMVs (up, down) and the next layer's q/k/v, where the step has them
        for name, n in (("up", 2), ("down", 3), ("next q/k/v", 4)):
            if j + n < len(step) and step[j + n][0] == "gemv_nk":
                g = stamps(step[j + n][1])
                if len(g):
                    row.update({f"{name} start": g[:, 0].min() - t, f"{name} start (last)": g[:, 0].max() - t,
                                f"{name} wait": g[:, 1].min() - t, f"{name} end": g[:, 5].max() - t})
        rows.append(row)
    return rows


def timeline(state: dict) -> list[tuple[str, dict]]:
    """Each layer's kernels (the q/k/v GEMM, attention, output projection, up, down): per stamp, its earliest, median
    and latest block in us after the previous kernel's last block ended, medians over the layers; also the blocks
    that started after that end (they load their weights late)."""
    step, stamps = _last_step(state)
    names = ("q/k/v", "attention", "out-proj", "up", "down")
    per = {n: [] for n in names}
    for j, (op, key) in enumerate(step):
        if op != "attention_vec" or j < 2 or j + 3 >= len(step):
            continue
        prev_end = stamps(step[j - 2][1])[:, 5].max()       # the previous layer's down projection
        for n, (_, key2) in zip(names, step[j - 1:j + 4]):
            s = stamps(key2)
            row = {"blocks": float(len(s)), "late": float((s[:, 0] > prev_end).sum())}
            for c, col in enumerate(COLUMNS):
                v = s[:, c][s[:, c] > 0]
                if len(v):
                    row[col] = ((v.min() - prev_end) / 1e3, (np.median(v) - prev_end) / 1e3,
                                (v.max() - prev_end) / 1e3)
            per[n].append(row)
            prev_end = s[:, 5].max()
    out = []
    for n in names:
        rows = per[n]
        if not rows:
            continue
        agg = {"blocks": np.median([r["blocks"] for r in rows]), "late": np.median([r["late"] for r in rows])}
        for col in COLUMNS:
            vals = [r[col] for r in rows if col in r]
            if vals:
                agg[col] = tuple(float(np.median([v[i] for v in vals])) for i in range(3))
        out.append((n, agg))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="the session's cache capacity (default context + new + 8 + 128, as bench_more.py's "
                         "one-row sections: the capacity sets the attention's splits)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EETJIT_TEMPLATES_DIR"] = str(stamped_templates(Path(tmp) / "templates"))
        os.environ["EETJIT_DIRECT_LAUNCH"] = "0"
        import eetjit
        state = {"ops": {}, "log": [], "pool": None, "slots": {}, "off": 0}
        _install(state)
        sess = eetjit.compile(args.model, device="cuda", dtype="float16", verbose=False, max_batch=args.batch,
                              max_seq_len=args.max_seq_len or args.context + args.new + 8 + 128)
        vocab = sess.structure.vocab
        rng = np.random.default_rng(0)
        prompt = [[int(t) for t in rng.integers(0, vocab, args.context)] for _ in range(args.batch)]
        sess.generate(prompt, max_new_tokens=args.new)
        rows = report(state) if args.batch == 1 else []
        lines = timeline(state)
    if not lines:
        print("no stamps (the CUDA simulator writes none)")
        return 0
    if rows:
        print(f"{len(rows)} layers, us after the q/k/v GEMV's last block ended (median [min, max]):")
        for k in rows[0]:
            v = np.array([r[k] for r in rows if k in r]) / 1e3
            print(f"  {k:22s} {np.median(v):7.2f}  [{v.min():6.2f}, {v.max():6.2f}]")
    print(f"B{args.batch} x {args.context}: each kernel of a layer, us after the previous kernel's last block ended "
          "(first / median / last block; medians over the layers):")
    for n, agg in lines:
        print(f"  {n}: {agg['blocks']:.0f} blocks, {agg['late']:.0f} started after that end")
        for col in COLUMNS:
            if col in agg:
                a, b, c = agg[col]
                print(f"    {col:8s} {a:7.2f} {b:7.2f} {c:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
