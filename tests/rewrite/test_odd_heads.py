"""GPT-2 with an odd head count (XL's 25 heads × 64 at tiny size: 5 heads × 8, hidden 40), TorchScript opset 17.

The XL export (6.5 GB) kept its `/model/transformer/h.0/attn/Split` (and its GELU, Linear reshapes) unfused:
the front end handed the whole model, weights loaded, to onnx shape inference, which serializes it and hits
protobuf's 2 GiB limit; the failure was swallowed, the graph stayed untyped, and the rules that need a rank
(the TorchScript Split says axis=2, not -1) or a static reshape target left those ops. Here that limit is
simulated at a small size: shape inference refuses any model bigger than LIMIT bytes, as protobuf refuses
one over 2 GiB. The loader hands it the model with the weights stubbed out, so inference still succeeds, and
when inference does fail the loader says so (RuntimeWarning) instead of fusing less without a word."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnx
import pytest

import eetjit
from cases import random_feeds, real_positions
from eetjit.reference.executor import run_graph
from eetjit.resources import graphs_dir

HIDDEN, HEADS, LAYERS, VOCAB = 40, 5, 2, 97
LIMIT = 100_000   # bytes: the model with its weights is over this (~190 kB), without them under it (~50 kB)


def _export_module():
    spec = importlib.util.spec_from_file_location("graphs_export", graphs_dir() / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """(path of the ts17-eager export, the wrapped torch model)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch
    mod = _export_module()
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=LAYERS,
                                     n_head=HEADS, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
    mod.init_weights(model, 11, HIDDEN)
    wrapper = mod.wrap("gpt2", model.eval())
    path = tmp_path_factory.mktemp("odd-heads") / "gpt2-odd-ts17-eager.onnx"
    mod.export_onnx(wrapper, "gpt2", "ts17", path, mod.make_inputs("gpt2", VOCAB))
    return path, wrapper


@pytest.fixture
def protobuf_limit(monkeypatch):
    """Make onnx shape inference refuse models over `limit` bytes, as it refuses models over 2 GiB."""
    real = onnx.shape_inference.infer_shapes
    seen = []

    def set_limit(limit):
        def infer_shapes(model, *args, **kwargs):
            n = model.ByteSize()
            seen.append(n)
            if n > limit:
                raise ValueError(f"Message onnx.ModelProto exceeds maximum protobuf size of 2GB: {n}")
            return real(model, *args, **kwargs)
        monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer_shapes)
        return seen
    return set_limit


def _feeds(seed):
    return random_feeds("gpt2-odd", lengths=(7, 5, 2, 1), seed=seed, vocab=VOCAB)


def _assert_fully_fused(graph, report):
    assert report.counts.get("Attention") == LAYERS and report.counts.get("PadInfo") == 1, report.summary()
    left = {k: v for k, v in report.unfused.items()
            if k in ("Split", "Softmax", "MatMul", "Gemm", "Tanh", "Pow", "LayerNormalization")}
    assert not left, report.summary()
    for n in graph.nodes:
        if n.domain == "eet" and n.op_type == "Attention":
            assert (n.attrs["num_heads"], n.attrs["kv_num_heads"], n.attrs["head_dim"]) == (HEADS, HEADS, 8)
            # q, k, v come straight from the one QKV Linear (its Split absorbed as `split`)
            lin = {id(v.producer) for v in n.inputs[:3]}
            assert len(lin) == 1 and n.inputs[0].producer.attrs["split"] == [HIDDEN] * 3


def _assert_fused_equals_unfused(path, graph, wrapper):
    import torch
    plain = eetjit.load(path)
    for seed in (0, 1):
        feeds = _feeds(seed)
        (want,), (got,) = run_graph(plain, feeds), run_graph(graph, feeds)
        real = real_positions(feeds)
        np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
        np.testing.assert_allclose(want[real], ref[real], rtol=1e-4, atol=1e-4)


def test_odd_heads_fuse_fully(odd_model):
    path, wrapper = odd_model
    graph = eetjit.load(path)
    report = eetjit.fuse(graph)
    _assert_fully_fused(graph, report)
    _assert_fused_equals_unfused(path, graph, wrapper)


def test_odd_heads_fuse_fully_past_the_protobuf_limit(odd_model, protobuf_limit):
    """The XL case: the model with its weights is over the limit; shape inference must still type the graph."""
    path, wrapper = odd_model
    seen = protobuf_limit(LIMIT)
    assert onnx.load(str(path)).ByteSize() > LIMIT      # the simulation bites: the whole model is refused
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # inference must not have failed
        graph = eetjit.load(path)
    report = eetjit.fuse(graph)
    _assert_fully_fused(graph, report)      # the XL symptom: h.0's Split (and GELU, reshapes) left unfused
    assert seen and max(seen) <= LIMIT, seen
    _assert_fused_equals_unfused(path, graph, wrapper)


def test_failed_shape_inference_is_reported(odd_model, protobuf_limit):
    """When inference does fail, the loader warns (it used to pass silently, so the XL graph fused less with
    no word why); the untyped graph still computes the same logits."""
    path, wrapper = odd_model
    protobuf_limit(0)
    with pytest.warns(RuntimeWarning, match="shape inference failed .*maximum protobuf size"):
        graph = eetjit.load(path)
    assert all(n.outputs[0].shape is None for n in graph.nodes if n.op_type == "Split")
    eetjit.fuse(graph)
    _assert_fused_equals_unfused(path, graph, wrapper)
