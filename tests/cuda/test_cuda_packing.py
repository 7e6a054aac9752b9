"""Packed encoders on the CUDA backend: Pack / Unpack (pack_rows.py.j2), PadInfo from a mask in device memory
(pad_info.py.j2), each against its NumPy reference; then the packed BERT fixture through Session.run, whose
repeated input signature runs on fixed buffers (one CUDA graph on a GPU) and must give the CPU session's outputs.
"""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import SETTINGS, SIMULATED, assert_close, get_backend, pick, reference, rounded, run_cuda
from cuda_helpers import single_node, values

import eetjit
from eetjit.fused.op_attention import pad_info
from eetjit.resources import graphs_dir

DTYPES = st.sampled_from(["float32", "float16", "bfloat16"])
seeds = st.integers(0, 2**32 - 1)


def _index(rng, B, S):
    """Flat positions of the real tokens of B left- or right-padded rows (some rows may be empty)."""
    lens = rng.integers(0, S + 1, B)
    left = rng.random() < 0.5
    mask = np.zeros((B, S), np.int64)
    for b, n in enumerate(lens):
        if left:
            mask[b, S - n:] = 1
        else:
            mask[b, :n] = 1
    return mask, np.flatnonzero(mask.reshape(-1)).astype(np.int64)


@SETTINGS
@given(B=st.integers(1, pick(3, 8)), S=st.integers(1, pick(4, 40)), F=st.sampled_from(pick((3, 8), (64, 768))),
       dtype=DTYPES, seed=seeds)
def test_pack_and_unpack(where, B, S, F, dtype, seed):
    rng = np.random.default_rng(seed)
    mask, index = _index(rng, B, S)
    x = values(rng, (B, S, F))
    g, node = single_node("Pack", [x, index])
    backend = get_backend(dtype)
    xr = rounded(x, dtype)
    packed = run_cuda(backend, g, node, [x, index])
    assert_close(packed, reference(g, node, [xr, index]), dtype, scale=0.0)       # a copy: exact
    like = np.zeros((B, S), np.int64)
    p = values(rng, (1, index.size, F))
    g, node = single_node("Unpack", [p, index, like])
    got = run_cuda(backend, g, node, [p, index, like])
    assert_close(got, reference(g, node, [rounded(p, dtype), index, like]), dtype, scale=0.0)   # pads: zeros


@SETTINGS
@given(B=st.integers(1, pick(4, 300)), S=st.integers(1, pick(6, 600)), seed=seeds)
def test_pad_info_kernel_from_a_device_mask(where, B, S, seed):
    rng = np.random.default_rng(seed)
    mask, _ = _index(rng, B, S)
    mask *= rng.integers(1, 5, mask.shape)          # any nonzero value counts as a real token
    backend = get_backend()
    dev = backend.dev
    mask_dev = dev.upload(mask)
    ranges = dev.empty((B, 2), np.int64)
    threads = 64
    dev.launch(backend.kernel("pad_info", threads=threads), -(-B // threads), threads, mask_dev, ranges)
    np.testing.assert_array_equal(dev.to_host(ranges), pad_info(mask))


def _bert_feeds(rng, B, S, vocab, lens=None):
    lens = rng.integers(1, S + 1, B) if lens is None else np.asarray(lens)
    mask = (np.arange(S)[None, :] < lens[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, (B, S)).astype(np.int64) * mask
    tt = rng.integers(0, 2, (B, S)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def test_repeated_packed_bert_runs_match_the_cpu(where):
    """Session.run of one signature three times (trace; fixed buffers, captured on a GPU; replay), with different
    values each time, and a fourth batch of another signature in between: each equals the CPU session's output
    on its real tokens (the attention of the packed plan may leave its pad rows unwritten: the output's pads must
    still be zeros)."""
    path = str(graphs_dir() / "bert-ts17-eager.onnx")
    cpu = eetjit.compile(path, device="cpu", verbose=False)
    gpu = eetjit.compile(path, device="cuda", dtype="float32", verbose=False, max_batch=4, max_seq_len=16)
    vocab = cpu.structure.vocab
    rng = np.random.default_rng(3)
    batches = [_bert_feeds(rng, 3, 7, vocab, lens) for lens in ([7, 2, 5], [3, 7, 4], [6, 6, 2])]
    batches.insert(2, _bert_feeds(rng, 2, 5, vocab, [5, 1]))
    runs = []
    for feeds in batches:
        (want,) = cpu.run(None, feeds)
        (got,) = gpu.run(None, feeds)
        real = feeds["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)
        assert np.all(got[~real] == 0)
        runs.append(gpu.stats["packed_runs"])
    assert runs == [1, 2, 3, 4]
    captured = list(gpu._captured.plans.values())
    assert captured and all(cp.runs >= 1 for cp in captured)
    if not SIMULATED:
        assert any(cp.graph is not None for cp in captured), [cp.capture_failed for cp in captured]
