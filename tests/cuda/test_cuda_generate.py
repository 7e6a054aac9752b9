"""Generation end to end on the CUDA backend: the prompt pass, the decode step on fixed buffers (captured as a
CUDA graph on a GPU), greedy tokens picked on the device.

In the simulator (default run): tiny GPT-2 and LLaMA fixtures, tokens equal the CPU session's. On a GPU
(`-m gpu`): tokens equal Hugging Face's greedy `generate` and the CPU session's in float32, float16/bfloat16
logits stay within the dtype's tolerance of float32, graphs on and off agree, and the step really is one graph.
"""
import importlib.util

import numpy as np
import pytest

from cuda_helpers import SIMULATED

import eetjit
from eetjit.resources import graphs_dir
from eetjit.runtime.cuda_graph import DecodeStep

FIXTURES = {"gpt2": "gpt2-ts17-eager", "llama": "llama-dyn18-sdpa"}
PROMPTS = [[5, 17, 33, 2, 9], [40, 41], [7, 8, 9, 10, 11, 12, 13], [60]]


def _session(family, device, dtype="float32", **kw):
    return eetjit.compile(str(graphs_dir() / f"{FIXTURES[family]}.onnx"), device=device, dtype=dtype, verbose=False,
                          max_batch=4, max_seq_len=kw.pop("max_seq_len", 48), **kw)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sim_generate_matches_the_cpu_session(family):
    if not SIMULATED:
        pytest.skip("simulator run")
    prompts = PROMPTS[:2]
    want = _session(family, "cpu").generate(prompts, max_new_tokens=3)
    sess = _session(family, "cuda")
    assert sess.generate(prompts, max_new_tokens=3) == want
    gen = sess._generator
    step = gen.steps[len(prompts)]
    assert step.runs == 2 and step.bufs is not None and step.graph is None     # the simulator cannot capture
    assert sess.backend.host_roundtrips == 0


def test_sim_generate_with_the_norm_in_the_gemv(monkeypatch):
    """The decode step's one-row GEMMs on gemv_nk (forced in the simulator), each norm folded into the projection
    that reads it (eet.NormLinear, computed in the GEMV's prologue): the CPU session's tokens."""
    if not SIMULATED:
        pytest.skip("simulator run")
    prompts = [PROMPTS[0]]
    want = _session("gpt2", "cpu").generate(prompts, max_new_tokens=2)
    monkeypatch.setenv("EETJIT_GEMV_MAX_M", "1")
    sess = _session("gpt2", "cuda")
    launched = []           # (kernel, its second argument) of every launch, in order
    launch = sess.backend.dev.launch
    monkeypatch.setattr(sess.backend.dev, "launch", lambda kern, grid, threads, *a: (
        launched.append((kern, a[1] if len(a) > 1 else None)), launch(kern, grid, threads, *a)))
    assert sess.generate(prompts, max_new_tokens=2) == want
    layers = len(sess.structure.layers)
    assert sum(n.op_type == "NormLinear" for n in sess._generator.gen.graph.nodes) == 2 * layers
    prologues = [dict(memo[2]).get("norm") for memo in sess.backend._kernels if memo[0] == "gemv_nk"]
    assert "layer" in prologues
    # each GEMV of the decode step learnt the one launched after it (its L2 prefetch), in the step's order: 4 a
    # layer and the LM head
    nk = {id(fn) for memo, fn in sess.backend._kernels.items() if memo[0] == "gemv_nk"}
    step = [w for kern, w in launched if id(kern) in nk][-(4 * layers + 1):]      # the last step's weights
    assert len(step) == 4 * layers + 1 and len({id(w) for w in step}) == len(step)
    assert [sess.backend._pf_next[id(w)][1] is nxt for w, nxt in zip(step, step[1:])] == [True] * (4 * layers)


# --- on a GPU ------------------------------------------------------------------------------------------------
def _hf_model(family):
    spec = importlib.util.spec_from_file_location("graphs_export", graphs_dir() / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_model(family, size="tiny", seed=0, attn="eager")


def _hf_generate(model, prompts, n):
    import torch
    P = max(map(len, prompts))
    ids = torch.zeros((len(prompts), P), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return [p + out[b, P:].tolist() for b, p in enumerate(prompts)]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gpu_greedy_tokens_match_hugging_face_and_the_cpu(family, monkeypatch):
    if SIMULATED:
        pytest.skip("needs a GPU")
    monkeypatch.setenv("EETJIT_DECODE_STEPS", "4")      # greedy steps in blocks of 4 once the step is a graph
    n = 20
    want = _hf_generate(_hf_model(family), PROMPTS, n)
    sess = _session(family, "cuda")
    assert sess.generate(PROMPTS, max_new_tokens=n) == want
    assert _session(family, "cpu").generate(PROMPTS, max_new_tokens=n) == want
    step = sess._generator.steps[len(PROMPTS)]
    assert step.graph is not None and step.capture_failed is None     # the decode step is one CUDA graph
    assert any(graph is not None for _, graph in step._blocks.values())    # greedy steps in blocks of one graph
    assert sess.backend.host_roundtrips == 0
    # a second call replays the same graph (same batch size), a smaller batch gets its own
    assert sess.generate(PROMPTS, max_new_tokens=n) == want
    assert sess.generate(PROMPTS[:1], max_new_tokens=n) == [want[0]]
    # the third prompt pass of one shape is a graph replay, with the same tokens
    assert sess.generate(PROMPTS, max_new_tokens=n) == want
    pp = sess._generator.prompts[(len(PROMPTS), max(map(len, PROMPTS)))]
    assert pp.runs == 3 and pp.graph is not None and pp.capture_failed is None


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gpu_graphs_off_gives_the_same_tokens(family, monkeypatch):
    if SIMULATED:
        pytest.skip("needs a GPU")
    want = _session(family, "cuda").generate(PROMPTS, max_new_tokens=12)
    monkeypatch.setenv("EETJIT_CUDA_GRAPHS", "0")
    sess = _session(family, "cuda")
    assert sess.generate(PROMPTS, max_new_tokens=12) == want
    assert sess._generator.steps[len(PROMPTS)].graph is None


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype,tol", [("float16", 2e-2), ("bfloat16", 8e-2)])
@pytest.mark.parametrize("S", [9, 1])
def test_gpu_half_precision_logits_within_tolerance(family, dtype, tol, S):
    """S = 1: three rows, so the half GEMMs run on the tensor-core GEMV (gemv_mma.py.j2) as in a batch's decode."""
    if SIMULATED:
        pytest.skip("needs a GPU")
    rng = np.random.default_rng(0)
    B = 3
    ids = rng.integers(3, 97, (B, S)).astype(np.int64)
    mask = np.ones((B, S), np.int64)
    if S > 1:
        mask[1, :4] = 0
        mask[2, :8] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    ref = _session(family, "cuda").run(None, feeds)[0]
    got = _session(family, "cuda", dtype).run(None, feeds)[0]
    real = mask.astype(bool)
    err = np.abs(got[real] - ref[real]).max() / np.abs(ref[real]).max()
    assert err < tol, err


@pytest.mark.gpu
def test_gpu_sampling_and_eos(monkeypatch):
    """Sampling runs on the host from the logits of the graph; eos stops a sequence."""
    if SIMULATED:
        pytest.skip("needs a GPU")
    sess = _session("gpt2", "cuda")
    a = sess.generate(PROMPTS, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, seed=3)
    b = sess.generate(PROMPTS, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, seed=3)
    assert a == b
    greedy = sess.generate(PROMPTS[:1], max_new_tokens=10)
    eos = greedy[0][len(PROMPTS[0]) + 2]
    stopped = sess.generate(PROMPTS[:1], max_new_tokens=10, eos_token_id=eos)
    assert stopped[0] == greedy[0][:len(PROMPTS[0]) + 3]


@pytest.mark.gpu
def test_gpu_long_context_decode():
    """A 16k-token cache: the split-over-the-sequence attention runs every step of a long generation."""
    if SIMULATED:
        pytest.skip("needs a GPU")
    sess = _session("llama", "cuda", "float16", max_seq_len=16384)
    long_prompt = list(np.random.default_rng(1).integers(3, 97, 100))
    out = sess.generate([long_prompt, [5, 6]], max_new_tokens=8)
    assert [len(o) for o in out] == [108, 10]


@pytest.mark.gpu
def test_gpu_cold_start_compiles_in_workers(tmp_path, monkeypatch):
    """A cold cache: the kernels of a new shape's prompt pass and decode step are compiled by worker processes
    (eetjit.codegen.workers) before the first runs, which then only load them from Numba's disk cache; the
    tokens are those of a session that compiled as it went. A warm start on that cache launches the cubins those
    runs left, without importing Numba (or, with that off, loads each kernel from Numba's cache once)."""
    if SIMULATED:
        pytest.skip("needs a GPU")
    from eetjit import codegen
    from eetjit.runtime.cuda_graph import CudaGenerator
    want = _session("gpt2", "cuda", "float16").generate(PROMPTS[:2], max_new_tokens=4)
    monkeypatch.setenv("EETJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EETJIT_COMPILE_WORKERS", "2")
    codegen.clear_memory_cache()
    sess = _session("gpt2", "cuda", "float16")
    gen = sess._generator = CudaGenerator(sess)
    done = gen.compile_ahead(2, 5)
    assert done is not None and done["jobs"] >= 5 and not done["failed"], done
    codegen.reset_stats()
    assert sess.generate(PROMPTS[:2], max_new_tokens=4) == want
    stats = codegen.stats()
    assert stats["compiles"] == 0 and stats["disk_hits"] >= done["jobs"], stats
    # those launches (through Numba) left each kernel's cubin for launches without Numba (eetjit.backends.cuda_direct)
    assert len(list((tmp_path / "kernels" / "cuda" / "direct").glob("*.cubin"))) >= done["jobs"]
    # a warm start (a fresh process on that cache): every launch is of a cached cubin, Numba is never imported; with
    # EETJIT_DIRECT_LAUNCH=0, every kernel is loaded from Numba's disk cache once and none compiled
    child = (
        "import json, sys\n"
        "loads = []\n"
        "if sys.argv[3] == '0':\n"
        "    from numba.cuda.core import caching\n"
        "    plain = caching.Cache.load_overload\n"
        "    def counted(self, sig, ctx):\n"
        "        loads.append((self._name, str(sig)))\n"
        "        return plain(self, sig, ctx)\n"
        "    caching.Cache.load_overload = counted\n"
        "import eetjit\n"
        "from eetjit import codegen\n"
        "from eetjit.backends import cuda_direct\n"
        "s = eetjit.compile(sys.argv[1], device='cuda', dtype='float16', verbose=False, max_batch=4, max_seq_len=48)\n"
        "print(json.dumps({'tokens': s.generate(json.loads(sys.argv[2]), max_new_tokens=4), 'loads': loads,\n"
        "                  'stats': codegen.stats(), 'direct': cuda_direct.stats(),\n"
        "                  'numba': sorted(m for m in sys.modules if m.startswith('numba'))[:5]}))\n")
    import json
    import os
    import subprocess
    import sys
    for direct in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", child, str(graphs_dir() / f"{FIXTURES['gpt2']}.onnx"),
                              json.dumps(PROMPTS[:2]), direct], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "EETJIT_DIRECT_LAUNCH": direct})
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["tokens"] == want
        assert r["stats"]["compiles"] == 0 and r["stats"]["disk_hits"] == len(r["loads"]), r
        if direct == "1":
            assert r["numba"] == [] and r["direct"]["saves"] == 0, r
            assert r["direct"]["loads"] >= done["jobs"] and r["direct"]["launches"] > r["direct"]["loads"], r
        else:
            assert r["direct"]["launches"] == 0 and r["loads"], r
            assert len(set(map(tuple, r["loads"]))) == len(r["loads"]), r["loads"]       # no kernel loaded twice


def test_sim_repeated_prompt_shape_runs_on_fixed_buffers():
    """The second prompt pass of one (batch, length) runs on the buffers of the plan's memory plan (what a GPU
    then captures as a graph): the same tokens, no op allocates or copies from the host while `capturing`, and
    different prompts of that shape give their own tokens.
    First, the dry run before a new shape's first runs (CudaGenerator.dry_run, for compiling side by side)
    reaches every kernel of the prompt pass and the decode step without running one, and leaves nothing the real
    runs would see: no memory plan, no KV-cache write, the CPU session's tokens after it."""
    if not SIMULATED:
        pytest.skip("simulator run")
    from eetjit.runtime.cuda_graph import CudaGenerator
    cpu = _session("gpt2", "cpu")
    sess = _session("gpt2", "cuda")
    gen = sess._generator = CudaGenerator(sess)
    caches = {k: v.copy() for k, v in gen.caches.items()}
    recorded = gen.dry_run(2, 5)
    names = {k.py_func.__module__.split("_")[2] for k, types in recorded}
    assert {"embedding", "argmax"} <= names and len(recorded) >= 10, names
    assert all(types is None for _, types in recorded)        # the simulator's kernels have no argument types
    assert not gen.plan._arenas and sess.backend.dev.deferred is None
    assert all(np.array_equal(v, caches[k]) for k, v in gen.caches.items())
    assert gen.dry_run(2, 5) == []                             # once per shape
    assert gen.dry_run(2, 7) != []                             # a new prompt length
    other = [[9, 8, 7, 6, 5], [3, 3]]
    want, want_other = cpu.generate(PROMPTS[:2], max_new_tokens=2), cpu.generate(other, max_new_tokens=2)
    assert sess.generate(PROMPTS[:2], max_new_tokens=2) == want
    assert sess.generate(other, max_new_tokens=2) == want_other
    pp = sess._generator.prompts[(2, 5)]
    assert pp.runs == 2 and pp.bufs is not None
    dev = sess.backend.dev
    dev.capturing = True
    try:
        pp._collecting(lambda: pp._execute(pp.bufs))
    finally:
        dev.capturing = False
    assert sess.generate(PROMPTS[:2], max_new_tokens=2) == want


def test_sim_decode_step_allocates_nothing_once_warm():
    """The capture invariant, checked without a GPU: handed its fixed buffers, no op of the decode step allocates
    or copies from the host (Device raises CaptureError while `capturing`), even after prompt passes of other
    shapes have run through the same ops in between."""
    if not SIMULATED:
        pytest.skip("simulator run")
    sess = _session("gpt2", "cuda")              # the TorchScript export: plain ONNX view ops in the step too
    sess.generate(PROMPTS[:2], max_new_tokens=3)              # prompt pass + the B=2 step's two eager runs
    sess.generate([[3, 4, 5, 6, 7, 8, 9], [12]], max_new_tokens=1)     # prompt passes of other shapes
    step = sess._generator.steps[2]
    dev = sess.backend.dev
    step._collecting(lambda: step._execute(step.bufs))     # what run() does before capturing
    dev.capturing = True
    try:
        step._collecting(lambda: step._execute(step.bufs))
    finally:
        dev.capturing = False



def test_sim_stream_closed_early_waits_for_its_queued_copy(monkeypatch):
    """The pipelined loop queues the next step's token copy before yielding; a caller that stops reading leaves
    it queued, and closing the stream waits for it (its pinned block must not go back to the pool while the
    copy may still write into it)."""
    if not SIMULATED:
        pytest.skip("simulator run")
    sess = _session("gpt2", "cuda")
    queued, waited = [], []
    to_host_async = sess.backend.dev.to_host_async

    def tracked(x):
        wait = to_host_async(x)
        queued.append(wait)
        return lambda: waited.append(wait) or wait()
    monkeypatch.setattr(sess.backend.dev, "to_host_async", tracked)
    it = sess.generate(PROMPTS[:1], stream=True, max_new_tokens=4)
    first = next(it)
    assert len(first) == 1 and len(queued) == 2 and len(waited) == 1     # token 0 read, token 1's copy queued
    it.close()
    assert len(waited) == 2 and len(queued) == 2


def test_sim_decode_steps_in_blocks(monkeypatch):
    """Greedy steps queued 3 at a time (DecodeStep.steps: eager in the simulator, one graph on a GPU) give the CPU
    session's tokens, with a count of new tokens that is not a whole number of blocks, and eos ending a row inside
    a block while the other row goes on."""
    if not SIMULATED:
        pytest.skip("simulator run")
    monkeypatch.setenv("EETJIT_DECODE_STEPS", "3")
    cpu, sess = _session("gpt2", "cpu"), _session("gpt2", "cuda")
    prompts = PROMPTS[:2]
    want = cpu.generate(prompts, max_new_tokens=5)
    queued = []
    many = DecodeStep.steps

    def counted(self, n):
        queued.append(n)
        return many(self, n)
    monkeypatch.setattr(DecodeStep, "steps", counted)
    assert sess.generate(prompts, max_new_tokens=5) == want
    # tokens 1..4 from decode steps: a block of 3 while 3 are left, then one single step
    assert queued == [3]
    eos = want[0][len(prompts[0]) + 2]
    assert eos not in want[1][len(prompts[1]):len(prompts[1]) + 3]
    assert sess.generate(prompts, max_new_tokens=5, eos_token_id=eos) == \
        cpu.generate(prompts, max_new_tokens=5, eos_token_id=eos)


def test_sim_folded_session_shares_its_weights(monkeypatch):
    """A float16 session where gemv_mma runs folds each norm's gamma/beta into the Linears that read it on the
    session's graph (eetjit.plan.norm_linear.fold_norm_affine): the generation graph's NormLinears take the same
    weight arrays as Session.run's Linears (one device copy), gamma = 1 and no beta; 3 rows run the folded gemv_mma
    prologue. From EETJIT_GEMV_MMA_STATS_MIN_M rows (2 here), the Linear that makes a residual sum goes into the
    NormLinear reading it (eetjit.plan.norm_linear.fold_producer_linear: every residual NormLinear, 2 per layer
    but the first) and gemv_mma runs the pair: the first GEMM adds the residual and writes the row statistics
    (rstats), the second reads them (pstats). The tokens equal an unfolded session's, whose GEMMs go to cuBLASLt
    (in the simulator a float32 np.matmul: gemv_mma is the simulator's slowest kernel, and this test ran it twice)."""
    if not SIMULATED:
        pytest.skip("simulator run")
    prompts = PROMPTS[:3]
    monkeypatch.setenv("EETJIT_GEMV_MMA_MAX_M", "0")
    monkeypatch.setenv("EETJIT_NORM_FOLD", "0")
    plain = _session("gpt2", "cuda", "float16")
    want = plain.generate(prompts, max_new_tokens=2)
    assert not plain.backend.fold_producer_linear
    monkeypatch.setenv("EETJIT_GEMV_MMA_MAX_M", "32")
    monkeypatch.setenv("EETJIT_NORM_FOLD", "1")
    monkeypatch.setenv("EETJIT_GEMV_MMA_STATS_MIN_M", "2")
    sess = _session("gpt2", "cuda", "float16")
    assert sess.generate(prompts, max_new_tokens=2) == want
    run_weights = {id(n.input(1).const) for n in sess.graph.nodes if n.op_type == "Linear"}
    folded = [n for n in sess._generator.gen.graph.nodes if n.op_type == "NormLinear"]
    assert len(folded) == 2 * len(sess.structure.layers)
    assert all(id(n.input(4).const) in run_weights for n in folded)
    assert all(np.all(n.input(2).const == 1) and n.input(3) is None for n in folded)
    pre = [n for n in folded if len(n.inputs) > 6]
    assert len(pre) == 2 * len(sess.structure.layers) - 1
    assert all(id(n.input(6).const) in run_weights for n in pre)
    kernels = [dict(memo[2]) for memo in sess.backend._kernels if memo[0] == "gemv_mma"]
    assert any(k.get("fold") and not k.get("pstats") for k in kernels)
    assert any(k.get("rstats") for k in kernels) and any(k.get("pstats") for k in kernels)

