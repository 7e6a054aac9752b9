"""The Embedding rules (embedding.py): which lookups each family's fixtures fuse into eet.Embedding, that the
fused graph computes the same, and the near misses of graphs that are almost an embedding."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from cases import family, fixture_names, fixture_path, random_feeds
from eetjit.reference.executor import run_graph
from eetjit.rewrite import fuse
from eetjit.rewrite.rules import add_norm, embedding, layer_norm

NAMES = fixture_names()
RULES = layer_norm.RULES + embedding.RULES + add_norm.RULES


def _embedding_node(graph):
    (node,) = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Embedding"]
    return node


def _graph_input(v):
    while v.producer is not None and v.producer.op_type in ("Reshape", "Cast", "Unsqueeze"):
        v = v.producer.inputs[0]
    return v.name


@pytest.mark.parametrize("name", NAMES)
def test_fixture_embedding(name):
    """Whole table: one Embedding per model, with the operands of its family."""
    graph = eetjit.load(fixture_path(name))
    report = eetjit.fuse(graph)
    assert report.counts.get("Embedding") == 1, report.summary()
    node = _embedding_node(graph)
    ins = node.inputs + [None] * (8 - len(node.inputs))
    assert _graph_input(ins[0]) == "input_ids" and ins[2].is_const
    fam = family(name)
    assert (ins[1] is not None and ins[3] is not None) == (fam != "llama"), node
    assert (ins[4] is not None and _graph_input(ins[4]) == "token_type_ids") == (fam == "bert"), node
    assert (ins[6] is not None and "epsilon" in node.attrs) == (fam == "bert"), node
    # the lookups are gone: no Gather reads a float table any more
    assert not [n for n in graph.nodes if n.op_type == "Gather" and n.inputs[0].is_const
                and n.inputs[0].const.dtype.kind == "f"]


@pytest.mark.parametrize("name", NAMES)
def test_fixture_embedding_numerics(name):
    plain, fused = eetjit.load(fixture_path(name)), eetjit.load(fixture_path(name))
    report = fuse(fused, RULES)
    assert report.counts.get("Embedding") == 1, report.summary()
    feeds = random_feeds(name)
    (want,), (got,) = run_graph(plain, feeds), run_graph(fused, feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


# --- small graphs ---------------------------------------------------------------------------------------

B, S, V, P, T, E = 3, 5, 13, 16, 2, 8
RNG = np.random.default_rng(0)
WTE = RNG.standard_normal((V, E)).astype(np.float32)
WPE = RNG.standard_normal((P, E)).astype(np.float32)
WTT = RNG.standard_normal((T, E)).astype(np.float32)
GAMMA, BETA = RNG.standard_normal(E).astype(np.float32), RNG.standard_normal(E).astype(np.float32)


class Builder:
    def __init__(self, opset=18):
        self.opset, self.nodes, self.inits, self._n = opset, [], [], 0
        self.inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]

    def const(self, arr, name=None):
        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, *inputs, **attrs):
        self._n += 1
        out = f"{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n_{out}", **attrs))
        return out

    def positions(self, of="input_ids"):
        """Unsqueeze(Range(0, Shape(of)[1], 1), 0): what GPT-2 exports compute."""
        seq = self.op("Gather", self.op("Shape", of), self.const(np.array(1, np.int64)), axis=0)
        rng = self.op("Range", self.const(np.array(0, np.int64)), seq, self.const(np.array(1, np.int64)))
        return self.op("Unsqueeze", rng, self.const(np.array([0], np.int64)))

    def save(self, tmp_path, outputs):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        onnx.save(model, tmp_path / "m.onnx")
        return tmp_path / "m.onnx"


def _feeds(with_types=False):
    feeds = {"input_ids": RNG.integers(0, V, (B, S))}
    if with_types:
        feeds["token_type_ids"] = RNG.integers(0, T, (B, S))
    return feeds


def _fuse_and_compare(path, feeds, rules=RULES):
    plain, fused = eetjit.load(path), eetjit.load(path)
    report = fuse(fused, rules)
    for want, got in zip(run_graph(plain, feeds), run_graph(fused, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return fused, report


def _reasons(report):
    return [nm.reason for nm in report.near_misses if nm.rule.startswith("Embedding/")]


@pytest.mark.parametrize("shape_of_lookup", [False, True])
def test_gpt2_word_plus_position(tmp_path, shape_of_lookup):
    """wte[ids] + wpe[positions]; with `shape_of_lookup` the positions come from Shape(wte[ids]) as the
    TorchScript exporter writes it — that Shape is rewired to the ids so the lookup can be fused."""
    b = Builder()
    word = b.op("Gather", b.const(WTE, "wte"), "input_ids")
    pos = b.positions(of=word if shape_of_lookup else "input_ids")
    h = b.op("Add", b.op("Gather", b.const(WPE, "wpe"), pos), word)
    graph, report = _fuse_and_compare(b.save(tmp_path, [h]), _feeds())
    assert report.counts == {"Embedding": 1}, report.summary()
    node = _embedding_node(graph)
    assert [v.name for v in node.inputs] == ["input_ids", pos, "wte", "wpe"]


def test_bert_lookups_and_layer_norm(tmp_path):
    """(word + types) + positions, then LayerNorm: all of it is one Embedding with gamma, beta, epsilon."""
    b = Builder(17)
    b.inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]))
    pos = b.op("Slice", b.const(np.arange(P, dtype=np.int64)[None], "position_ids"), b.const(np.array([0])),
               b.op("Unsqueeze", b.op("Gather", b.op("Shape", "input_ids"), b.const(np.array(1)), axis=0),
                    b.const(np.array([0]))), b.const(np.array([1])))
    h = b.op("Add", b.op("Add", b.op("Gather", b.const(WTE, "word"), "input_ids"),
                         b.op("Gather", b.const(WTT, "types"), "token_type_ids")),
             b.op("Gather", b.const(WPE, "pos"), pos))
    y = b.op("LayerNormalization", h, b.const(GAMMA, "gamma"), b.const(BETA, "beta"), epsilon=1e-12)
    graph, report = _fuse_and_compare(b.save(tmp_path, [y]), _feeds(with_types=True))
    assert report.counts == {"Embedding": 1}, report.summary()
    node = _embedding_node(graph)
    assert [v.name for v in node.inputs] == ["input_ids", pos, "word", "pos", "token_type_ids", "types", "gamma",
                                             "beta"]
    assert node.attrs["epsilon"] == pytest.approx(1e-12)


def test_bert_token_types_from_a_buffer(tmp_path):
    """Without a token_type_ids input BERT slices a buffer of zeros: two computed lookups, the smaller
    table is the token types."""
    b = Builder()
    types = b.op("Slice", b.const(np.zeros((1, P), np.int64)), b.const(np.array([0])),
                 b.op("Unsqueeze", b.op("Gather", b.op("Shape", "input_ids"), b.const(np.array(1)), axis=0),
                      b.const(np.array([0]))), b.const(np.array([1])))
    pos = b.positions()
    h = b.op("Add", b.op("Add", b.op("Gather", b.const(WTT, "types"), types),
                         b.op("Gather", b.const(WTE, "word"), "input_ids")), b.op("Gather", b.const(WPE, "pos"), pos))
    y = b.op("LayerNormalization", h, b.const(GAMMA, "gamma"), b.const(BETA, "beta"), epsilon=1e-12)
    graph, report = _fuse_and_compare(b.save(tmp_path, [y]), _feeds())
    assert report.counts == {"Embedding": 1}, report.summary()
    assert [v.name for v in _embedding_node(graph).inputs] == ["input_ids", pos, "word", "pos", types, "types",
                                                                "gamma", "beta"]


def test_bert_sum_used_elsewhere_keeps_its_layer_norm(tmp_path):
    """When the sum feeds more than the norm (GPT-2's first residual) the norm is not the embedding's: the
    lookups fuse, the LayerNorm stays, and that is no near miss."""
    b = Builder()
    h = b.op("Add", b.op("Gather", b.const(WTE), "input_ids"), b.op("Gather", b.const(WPE), b.positions()))
    y = b.op("LayerNormalization", h, b.const(GAMMA), b.const(BETA), epsilon=1e-5)
    graph, report = _fuse_and_compare(b.save(tmp_path, [y, b.op("Neg", h)]), _feeds())
    assert report.counts == {"Embedding": 1, "LayerNorm": 1}, report.summary()
    assert len(_embedding_node(graph).inputs) == 4 and not _reasons(report)


def test_llama_word_only(tmp_path):
    b = Builder()
    h = b.op("Gather", b.const(WTE, "embed_tokens"), b.op("Reshape", "input_ids", b.const(np.array([B, -1]))))
    graph, report = _fuse_and_compare(b.save(tmp_path, [b.op("Neg", h)]), _feeds())
    assert report.counts == {"Embedding": 1}
    ids, positions, wte = _embedding_node(graph).inputs
    assert _graph_input(ids) == "input_ids" and positions is None and wte.name == "embed_tokens"


def test_positions_table_alone_is_not_an_embedding(tmp_path):
    """A lookup by computed indices (a cos/sin cache by position) is not a token embedding, nor a near miss;
    a sum of such lookups is a near miss."""
    b = Builder()
    h = b.op("Gather", b.const(WPE), b.positions())
    graph, report = _fuse_and_compare(b.save(tmp_path, [h]), _feeds())
    assert "Embedding" not in report.counts and not _reasons(report)
    b = Builder()
    h = b.op("Add", b.op("Gather", b.const(WPE), b.positions()), b.op("Gather", b.const(WTE), b.positions()))
    graph, report = _fuse_and_compare(b.save(tmp_path, [h]), _feeds())
    assert "Embedding" not in report.counts
    assert any("no lookup reads token ids" in r for r in _reasons(report)), report.near_misses


@pytest.mark.parametrize("defect,reason", [
    ("lookup-is-output", "is a graph output"),
    ("lookup-used", "is also used by"),
    ("cast", "changes the embedding dtype"),
    ("axis", "axis 1"),
])
def test_near_misses(tmp_path, defect, reason):
    b = Builder()
    if defect == "axis":
        word = b.op("Gather", b.const(np.ascontiguousarray(WTE.T)), "input_ids", axis=1)   # [E, B, S]
        graph, report = _fuse_and_compare(b.save(tmp_path, [word]), _feeds())
    else:
        word = b.op("Gather", b.const(WTE), "input_ids")
        pos = b.op("Gather", b.const(WPE), b.positions())
        if defect == "cast":
            pos = b.op("Cast", b.op("Cast", pos, to=TensorProto.FLOAT16), to=TensorProto.FLOAT)
        h = b.op("Add", word, pos)
        outputs = [h, word] if defect == "lookup-is-output" else [h]
        if defect == "lookup-used":
            outputs.append(b.op("Neg", word))
        graph, report = _fuse_and_compare(b.save(tmp_path, outputs), _feeds())
    assert not [n for n in graph.nodes if n.op_type == "Embedding" and len(n.inputs) > 3], report.summary()
    assert any(reason in r for r in _reasons(report)), report.near_misses
