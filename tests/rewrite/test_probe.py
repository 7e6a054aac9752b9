"""The probe's shape inference (eetjit/rewrite/rules/_probe.py, SHAPE_RULES): a shape it infers from a producer's
input shapes is the shape the reference kernels compute, on every fixture before, during and after fusion; what no
rule can tell is computed as before; and fusing a GPT-2 export whose shape inference left dims unnamed runs no
projection, norm or attention through the reference kernels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eetjit
from cases import fixture_names, fixture_path
from eetjit.rewrite import fuse
from eetjit.rewrite.rules import RULES, _probe, attention

NAMES = fixture_names()
BEFORE_ATTENTION = RULES[:RULES.index(attention.RULES[0])]


def _stages(name):
    """The fixture as loaded, with the rules before attention applied (what the attention rule probes), fused."""
    yield "loaded", eetjit.load(fixture_path(name))
    g = eetjit.load(fixture_path(name))
    fuse(g, BEFORE_ATTENTION)
    yield "before attention", g
    g = eetjit.load(fixture_path(name))
    fuse(g)
    yield "fused", g


class _Blind(_probe.Probe):
    """A probe that reads no declared shape but the graph inputs': every shape of a computed value that a rule can
    tell comes from the rules (dyn18/dyn23 exports name every dim, so the plain probe would infer nothing there)."""

    def _known_shape(self, v):
        if v.producer is not None and not v.is_const and v not in self.memo and v not in self.overrides:
            return None
        return super()._known_shape(v)


@pytest.mark.parametrize("name", NAMES)
def test_inferred_shapes_are_the_computed_ones(name):
    inferred = 0
    for stage, g in _stages(name):
        for cfg in (_probe.LEFT, _probe.BOTH):
            shapes, values = _Blind(g, cfg), _probe.Probe(g, cfg)
            for node in g.nodes:
                if (node.domain, node.op_type) not in _probe.SHAPE_RULES:
                    continue
                for v in node.outputs:
                    if v is None or shapes._known_shape(v) is not None:
                        continue
                    got = shapes.static_shape(v)
                    if got is None:
                        continue
                    inferred += 1
                    want = tuple(values.value(v).shape)
                    assert got == want, f"{stage}, B={cfg.B} S={cfg.S}: {node.op_type} {v.name!r}: {got} != {want}"
    # the projections, norms, embeddings, attentions and the elementwise ops between them, at the least
    assert inferred > 50


def _ops_run_by_probes(monkeypatch, path):
    ran = []
    run = _probe.Probe._run

    def counted(self, node):
        ran.append((node.domain, node.op_type))
        return run(self, node)
    monkeypatch.setattr(_probe.Probe, "_run", counted)
    g = eetjit.load(path)
    report = fuse(g)
    return ran, report


def test_fusing_ts17_runs_no_projection_through_the_probes(monkeypatch):
    """gpt2-ts17-eager names no dim after its first projection ('unk__N'): before the shape rules, the attention
    rule's probes ran every Linear, LayerNorm, Embedding and Attention before it to learn a shape."""
    path = fixture_path("gpt2-ts17-eager")
    g = eetjit.load(path)
    assert any(isinstance(d, str) and d.startswith("unk") for n in g.nodes for v in n.outputs if v is not None
               and v.shape is not None for d in v.shape)
    ran, report = _ops_run_by_probes(monkeypatch, path)
    assert report.counts.get("Attention") == 2
    heavy = {op for dom, op in ran if dom == "eet"}
    assert not heavy, heavy
    assert ("", "Shape") in ran       # the probes did run (masks and reshape targets)


def _tile_graph():
    """x [batch, seq, 4] -> MatMul W [4, 6] -> Tile (no shape rule) -> Reshape to [0, 0, 2, -1]: the declared
    shapes have unnamed dims past the MatMul."""
    W = numpy_helper.from_array(np.arange(1, 25, dtype=np.float32).reshape(4, 6), "W")
    reps = numpy_helper.from_array(np.array([1, 2, 1], np.int64), "reps")
    tgt = numpy_helper.from_array(np.array([0, 0, 2, -1], np.int64), "tgt")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Tile", ["y", "reps"], ["t"]),
             helper.make_node("Reshape", ["y", "tgt"], ["r"]), helper.make_node("Reshape", ["t", "tgt"], ["rt"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
          (("y", ["u1", "u2", 6]), ("t", ["u3", "u4", 6]))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r", "rt")], [W, reps, tgt],
        value_info=vi)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_what_no_rule_tells_is_computed(tmp_path):
    path = tmp_path / "tile.onnx"
    onnx.save(_tile_graph(), path)
    g = eetjit.load(path, cleanup=False)
    by_name = {v.name: v for n in g.nodes for v in n.outputs}
    p = _probe.Probe(g, _probe.LEFT)          # B = 3, S = 5
    assert p.static_shape(by_name["y"]) == (3, 5, 6)
    assert p.static_shape(by_name["r"]) == (3, 5, 2, 3)
    assert p.static_shape(by_name["t"]) is None                      # Tile: no rule
    assert not any(v.producer is not None for v in p.memo)            # nothing computed yet (the target: a leaf)
    assert p.static_shape(by_name["rt"]) is None
    assert p.shape(by_name["rt"]) == (3, 10, 2, 3)                    # computed
    assert by_name["rt"] in p.memo


def _graph(nodes, inits, opset=17, outputs=("y",)):
    """x [batch, seq, 8] (float32) into `nodes`; each name in outputs a graph output."""
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


C = np.float32
RULE_CASES = {
    # Split: sizes as an input (opset 13+), equal parts (opset 17), num_outputs with a smaller last part (18)
    "split sizes": (_graph([helper.make_node("Split", ["x", "sz"], ["a", "b"], axis=-1)],
                           {"sz": np.array([2, 6], np.int64)}, 13, ("a", "b")), {"a": (3, 5, 2), "b": (3, 5, 6)}),
    "split equal": (_graph([helper.make_node("Split", ["x"], ["a", "b"], axis=2)], {}, 17, ("a", "b")),
                    {"a": (3, 5, 4), "b": (3, 5, 4)}),
    "split num_outputs": (_graph([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3)], {},
                                 18, ("a", "b", "c")), {"a": (3, 5, 3), "b": (3, 5, 3), "c": (3, 5, 2)}),
    "split uneven before 18": (_graph([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2)], {}, 17,
                                      ("a", "b", "c")), {"a": None}),
    # broadcasting either way round, and over a leading 1
    "add broadcast": (_graph([helper.make_node("Add", ["c", "x"], ["y"]),
                              helper.make_node("Mul", ["y", "d"], ["z"])],
                             {"c": np.ones((1, 8), C), "d": np.ones((1, 5, 1), C)}, 17, ("z",)),
                      {"y": (3, 5, 8), "z": (3, 5, 8)}),
    # Gather: a negative axis, a scalar index
    "gather": (_graph([helper.make_node("Gather", ["x", "i"], ["y"], axis=-1),
                       helper.make_node("Gather", ["x", "j"], ["z"], axis=1)],
                      {"i": np.array([2, 1], np.int64), "j": np.array(4, np.int64)}, 17, ("y", "z")),
               {"y": (3, 5, 2), "z": (3, 8)}),
    # MatMul: a batch broadcast; a 1-D operand has no rule (computed)
    "matmul": (_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("MatMul", ["x", "v"], ["z"])],
                      {"w": np.ones((2, 1, 8, 2), C), "v": np.ones(8, C)}, 17, ("y", "z")),
               {"y": (2, 3, 5, 2), "z": None}),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_each_rule_against_the_kernels(tmp_path, case):
    """Small graphs at the rules' edges: each inferred shape (declared shapes hidden) is the shape the reference
    kernels compute, and the cases a rule must tell are told; what a rule cannot tell (None) is computed."""
    model, want = RULE_CASES[case]
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    g = eetjit.load(path, cleanup=False)
    blind, values = _Blind(g, _probe.LEFT), _probe.Probe(g, _probe.LEFT)       # B = 3, S = 5
    by_name = {v.name: v for n in g.nodes for v in n.outputs if v is not None}
    for name, shape in want.items():
        assert blind.static_shape(by_name[name]) == shape, name
    for v in by_name.values():
        got = blind.static_shape(v)
        assert got is None or got == tuple(values.value(v).shape), v.name


def test_child_probe_shapes_follow_overrides_and_pass_throughs(tmp_path):
    """In a child probe an overridden value keeps its own shape, also where its node's rule, run for a sibling
    output, would say another (a Split output), and a pass-through node (a scale in `identity`) takes its data
    input's."""
    model = _graph([helper.make_node("Split", ["x"], ["a", "b"], axis=2), helper.make_node("Relu", ["b"], ["r"]),
                    helper.make_node("Mul", ["a", "h"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                   {"h": np.array(0.5, C)}, 17, ("r", "y"))
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    g = eetjit.load(path, cleanup=False)
    v = {o.name: o for n in g.nodes for o in n.outputs}
    base = _Blind(g, _probe.LEFT)
    child = base.child({v["b"]: np.zeros((3, 5, 7), np.float32)}, {id(v["m"].producer)})
    assert child.static_shape(v["y"]) == (3, 5, 4)        # first: the Split's rule runs (for a)
    assert child.static_shape(v["r"]) == (3, 5, 7)        # b is the override's, not the rule's
    assert base.static_shape(v["r"]) == (3, 5, 4)
