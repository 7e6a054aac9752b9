"""The coverage matrix: every attention, norm, activation and residual add of every layer of every fixture
(3 families x 4 exporter flavours x 2 attention implementations) is fused, and fusion keeps the numbers."""
from __future__ import annotations

import numpy as np
import pytest

import eetjit
from cases import assert_rel_close, family, fixture_names, fixture_path, random_feeds

NAMES = fixture_names()
L = 2  # layers in the tiny fixtures

EXPECTED = {
    "gpt2": {"Embedding": 1, "LayerNorm": 1, "AddLayerNorm": 2 * L, "Attention": L, "PadInfo": 1, "Linear": 4 * L + 1},
    "bert": {"Embedding": 1, "AddLayerNorm": 2 * L, "Attention": L, "PadInfo": 1, "Linear": 4 * L},
    "llama": {"Embedding": 1, "RMSNorm": 1, "AddRMSNorm": 2 * L, "Attention": L, "PadInfo": 1, "Rotary": 2 * L,
              "Linear": 3 * L + 1, "SwiGLU": L},
}
# Float compute that must not survive fusion (the shape/position plumbing that stays is integer work).
FORBIDDEN = {"Softmax", "ReduceMean", "LayerNormalization", "RMSNormalization", "Pow", "Sqrt", "Tanh", "Erf", "Gelu",
             "Sigmoid", "Gemm", "IsNaN", "Attention", "RotaryEmbedding", "Reciprocal"}


def _float_compute_left(graph):
    left = []
    for n in graph.nodes:
        if n.domain == "eet":
            continue
        if n.op_type in FORBIDDEN:
            left.append(n)
        elif n.op_type in ("MatMul", "Add", "Mul", "Div", "Sub") and any(
                o.dtype is not None and o.dtype.kind == "f" and (o.rank or 0) >= 2 for o in n.outputs):
            left.append(n)
    return left


@pytest.fixture(scope="module")
def fused():
    cache = {}

    def get(name):
        if name not in cache:
            g = eetjit.load(fixture_path(name))
            cache[name] = (g, eetjit.fuse(g))
        return cache[name]
    return get


@pytest.mark.parametrize("name", NAMES)
def test_every_block_is_fused(name, fused):
    graph, report = fused(name)
    counts = {k: v for k, v in report.counts.items()}
    want = EXPECTED[family(name)]
    assert {k: counts.get(k, 0) for k in want} == want, report.summary()
    left = _float_compute_left(graph)
    assert not left, f"float compute left unfused: {left[:5]}\n{report.summary()}"


@pytest.mark.parametrize("name", NAMES)
def test_structure_recognized(name, fused):
    graph, report = fused(name)
    s = report.structure
    assert s is not None, report.summary()
    assert s["kind"] == ("encoder" if family(name) == "bert" else "decoder")
    assert s["num_layers"] == L and s["hidden"] == 32 and s["vocab"] == 97
    assert all(layer["num_heads"] == 4 and layer["head_dim"] == 8 for layer in s["layers"])
    if family(name) == "llama":
        assert all(layer["kv_num_heads"] == 2 for layer in s["layers"]) and s["rotary"]
    assert s["input_ids"] == "input_ids" and s["attention_mask"] == "attention_mask"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lengths", [(7, 5, 2, 1), (6,)])
def test_fused_equals_unfused(name, lengths):
    feeds = random_feeds(name, lengths=lengths, seed=len(lengths))
    (want,) = eetjit.compile(fixture_path(name), fuse=False).run(None, feeds)
    (got,) = eetjit.compile(fixture_path(name)).run(None, feeds)
    real = feeds["attention_mask"].astype(bool)
    assert_rel_close(got[real], want[real], 1e-5)


def test_inspect_json_reports_fusion(capsys):
    import json
    from eetjit.cli import main
    assert main(["inspect", str(fixture_path("gpt2-ts14-eager")), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fusion"]["counts"]["Attention"] == L
