"""eetjit.plan.norm_linear: a norm read only by a Linear folds into one eet.NormLinear (generation graphs of a
backend with `fold_norm_linear`). Counts on the shipped decoders, the folded graph equal to the unfolded one, the
cases it must leave alone, and the NormLinear reference equal to the norm then the Linear."""
import numpy as np
import pytest
from codegen.helpers import values

from eetjit import fuse, load
from eetjit.ir import Graph
from eetjit.plan.generation import specialize_for_generation
from eetjit.plan.norm_linear import fold_norm_linear
from eetjit.plan.structure import find_structure
from eetjit.reference.executor import run_node
from eetjit.resources import graphs_dir


def _generation_graph(name):
    g = load(str(graphs_dir() / f"{name}.onnx"))
    fuse(g)
    s = find_structure(g)
    return specialize_for_generation(g, s), s


def _hist(g):
    return {k[len("eet."):]: v for k, v in g.op_histogram().items() if k.startswith("eet.")}


@pytest.mark.parametrize("name, per_layer", [("gpt2-ts17-eager", 2), ("gpt2-dyn18-sdpa", 2),
                                             ("llama-dyn18-sdpa", 1)])
def test_fold_counts(name, per_layer):
    """GPT-2: ln_1 -> the q/k/v projection and ln_2 -> the MLP's first projection in every layer (ln_f reaches the
    LM head through LastToken: left). LLaMA: the input RMSNorm -> q/k/v; the post-attention norm feeds SwiGLU,
    which has no prologue: left."""
    gen, s = _generation_graph(name)
    before = _hist(gen.graph)
    assert fold_norm_linear(gen.graph) == per_layer * len(s.layers)
    after = _hist(gen.graph)
    assert after["NormLinear"] == per_layer * len(s.layers)
    assert after["Linear"] == before["Linear"] - per_layer * len(s.layers)
    norms = sum(after.get(k, 0) for k in ("LayerNorm", "AddLayerNorm", "RMSNorm", "AddRMSNorm"))
    assert norms == sum(before.get(k, 0) for k in ("LayerNorm", "AddLayerNorm", "RMSNorm", "AddRMSNorm")) \
        - per_layer * len(s.layers)
    assert fold_norm_linear(gen.graph) == 0          # nothing left to fold


@pytest.mark.parametrize("name", ["gpt2-ts17-eager", "llama-dyn18-sdpa"])
def test_folded_graph_computes_the_same_logits(name):
    """The prompt pass of the folded generation graph equals the unfolded one's (CPU backend; NormLinear runs its
    reference there)."""
    gen, s = _generation_graph(name)
    folded = gen.graph.copy()
    assert fold_norm_linear(folded) > 0
    _same_prompt_logits(gen, s, gen.graph, folded)


def _same_prompt_logits(gen, s, *graphs):
    """The prompt pass of each graph (a generation graph of `gen`, CPU backend, 2 prompts of 5 tokens) gives the
    first one's logits."""
    from eetjit.backends.cpu import CpuBackend
    from eetjit.plan.generation import POSITIONS, START, STEP, cache_names
    from eetjit.runtime.plan import ExecutionPlan
    B, P, T = 2, 5, 8
    rng = np.random.default_rng(0)
    feeds = {gen.input_ids: rng.integers(0, s.vocab, (B, P)), POSITIONS: np.tile(np.arange(P), (B, 1)),
             START: np.zeros(B, np.int64), STEP: np.zeros(1, np.int64)}
    outs = []
    for g in graphs:
        run = dict(feeds)
        for i, layer in enumerate(s.layers):
            for c in cache_names(i):
                run[c] = np.zeros((B, layer.kv_num_heads, T, layer.head_dim), np.float32)
        outs.append(ExecutionPlan(g, CpuBackend(verbose=False), verbose=False).run(run)[0])
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-4)


def _norm_then_linear(kind="AddLayerNorm", extra_reader=None, weight_const=True, output=False):
    """A graph: norm(a [+ b]) -> Linear, optionally with a second reader of the norm's output, a weight fed at
    run time, or the norm's output also a graph output."""
    rng = np.random.default_rng(1)
    g = Graph("t")
    E, N = 8, 12
    a = g.value("a", np.float32, (1, 2, E))
    b = g.value("b", np.float32, (1, 2, E))
    g.inputs = [a, b]
    gamma, beta = g.constant(values(rng, (E,)), "gamma"), g.constant(values(rng, (E,)), "beta")
    ins = [a, b, gamma, beta] if kind == "AddLayerNorm" else [a, gamma, beta]
    norm = g.add_node(kind, ins, 2 if kind == "AddLayerNorm" else 1, {"epsilon": 1e-5}, domain="eet")
    if weight_const:
        W = g.constant(values(rng, (E, N)), "W")
    else:
        W = g.value("W", np.float32, (E, N))
        g.inputs.append(W)
    lin = g.add_node("Linear", [norm.outputs[0], W, g.constant(values(rng, (N,)), "bias")], 1,
                     {"activation": "gelu_tanh"}, domain="eet")
    g.outputs = list(lin.outputs) + list(norm.outputs[1:])
    if extra_reader == "linear":
        other = g.add_node("Linear", [norm.outputs[0], W], 1, {}, domain="eet")
        g.outputs.append(other.outputs[0])
    elif extra_reader == "identity":
        other = g.add_node("Identity", [norm.outputs[0]], 1)
        g.outputs.append(other.outputs[0])
    if output:
        g.outputs.append(norm.outputs[0])
    return g


def _folds_into_one_node(g, fold, feeds):
    """A copy of g folded by `fold` (once) into a single NormLinear computing g's outputs (reference executor)."""
    from eetjit.reference.executor import run_graph
    want = run_graph(g, feeds)
    folded = g.copy()
    assert fold(folded) == 1
    assert [n.op_type for n in folded.nodes] == ["NormLinear"]
    got = run_graph(folded, feeds)
    assert len(got) == len(want)
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    return folded


@pytest.mark.parametrize("kind", ["AddLayerNorm", "LayerNorm"])
def test_fold_small_graph_numbers(kind):
    rng = np.random.default_rng(2)
    _folds_into_one_node(_norm_then_linear(kind), fold_norm_linear,
                         {"a": values(rng, (1, 2, 8)), "b": values(rng, (1, 2, 8))})


@pytest.mark.parametrize("case", [dict(extra_reader="linear"), dict(extra_reader="identity"),
                                  dict(weight_const=False), dict(output=True)])
def test_fold_leaves_alone(case):
    """The normalized value read by anything besides the Linear, a graph output, or a weight fed at run time: the
    norm must stay (its output is needed, or the fused node could not be placed)."""
    g = _norm_then_linear(**case)
    ops = [n.op_type for n in g.nodes]
    assert fold_norm_linear(g) == 0
    assert [n.op_type for n in g.nodes] == ops


@pytest.mark.parametrize("norm, add, split", [("layer", 1, None), ("layer", 0, [4, 8]), ("rms", 1, [6, 6]),
                                              ("rms", 0, None)])
def test_norm_linear_reference_is_the_pair(norm, add, split):
    from eetjit.fused._math import layer_norm, rms_norm
    from eetjit.fused.op_linear import linear
    rng = np.random.default_rng(3)
    a, b = values(rng, (2, 3, 8)), values(rng, (2, 3, 8)) if add else None
    gamma, beta = values(rng, (8,)), values(rng, (8,)) if norm == "layer" else None
    W, bias = values(rng, (8, 12)), values(rng, (12,))
    attrs = {"norm": norm, "add": add, "epsilon": 1e-5, "activation": "silu"}
    if split:
        attrs["split"] = split
    g = Graph("t")
    ins = [None if x is None else g.constant(x) for x in (a, b, gamma, beta, W, bias)]
    node = g.add_node("NormLinear", ins, (len(split) if split else 1) + add, attrs, domain="eet")
    got = run_node(node, [a, b, gamma, beta, W, bias], g)
    x = a + b if add else a
    h = layer_norm(x, gamma, beta, 1e-5) if norm == "layer" else rms_norm(x, gamma, 1e-5)
    y = linear(h, W, bias, "silu")
    want = (np.split(y, np.cumsum(split)[:-1], axis=-1) if split else [y]) + ([x] if add else [])
    assert len(got) == len(want)
    for p, q in zip(got, want):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-6)


# --- fold_norm_affine: gamma and beta into the Linears' weights (CUDA half sessions) --------------------------------
@pytest.mark.parametrize("name, per_layer", [("gpt2-ts17-eager", 2), ("gpt2-dyn18-sdpa", 2),
                                             ("llama-dyn18-sdpa", 1)])
def test_fold_affine_counts_and_numbers(name, per_layer):
    """GPT-2: ln_1 (-> q/k/v), ln_2 (-> the MLP) in every layer; LLaMA: the input norm (-> q/k/v; the post-attention
    norm feeds SwiGLU: left). The final norm only where the LM head's weight is its own (a tied one is the
    embedding's too: folding would copy it). Every folded norm keeps gamma = 1 and no beta; the forward pass
    computes the same logits (float32 reference executor)."""
    from eetjit.plan.norm_linear import fold_norm_affine
    from eetjit.reference.executor import run_graph
    g = load(str(graphs_dir() / f"{name}.onnx"))
    fuse(g)
    s = find_structure(g)
    folded = g.copy()
    made = fold_norm_affine(folded)
    assert made == per_layer * len(s.layers) + (0 if s.tied_lm_head else 1)
    norms = [n for n in folded.nodes if n.domain == "eet" and n.op_type in ("LayerNorm", "AddLayerNorm", "RMSNorm",
                                                                             "AddRMSNorm")]
    ones = [n for n in norms if np.all(n.input(2 if n.op_type.startswith("Add") else 1).const == 1)]
    assert len(ones) == made and all(n.input(3 if n.op_type.startswith("Add") else 2) is None for n in ones)
    assert len(folded.initializers) == len(g.initializers) - sum(n.op_type.endswith("LayerNorm") for n in ones)
    assert fold_norm_affine(folded) == 0             # gamma = 1 and no beta: nothing left to fold
    rng = np.random.default_rng(0)
    feeds = {v.name: (rng.integers(0, s.vocab, (2, 5)) if v.dtype.kind == "i" else np.ones((2, 5), np.int64))
             for v in g.inputs}
    if s.attention_mask in feeds:
        feeds[s.attention_mask] = np.ones((2, 5), np.int64)
    want, got = run_graph(g, feeds)[0], run_graph(folded, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", [dict(extra_reader="identity"), dict(extra_reader="linear"),
                                  dict(weight_const=False), dict(output=True)])
def test_fold_affine_leaves_alone(case):
    """A reader that is not a Linear, a weight read by a second node (folding would need a second copy), a weight
    fed at run time, the normalized value a graph output: nothing folded."""
    from eetjit.plan.norm_linear import fold_norm_affine
    g = _norm_then_linear(**case)
    before = {id(v): v.const for v in g.initializers}
    assert fold_norm_affine(g) == 0
    assert {id(v): v.const for v in g.initializers} == before


def test_fold_affine_small_graph_numbers():
    from eetjit.plan.norm_linear import fold_norm_affine
    from eetjit.reference.executor import run_graph
    g = _norm_then_linear("AddLayerNorm")
    rng = np.random.default_rng(4)
    feeds = {"a": values(rng, (1, 2, 8)), "b": values(rng, (1, 2, 8))}
    want = run_graph(g, feeds)
    folded = g.copy()
    assert fold_norm_affine(folded) == 1
    for x, y in zip(run_graph(folded, feeds), want):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("store", ["float16", "bfloat16"])
def test_fold_affine_stores_the_rounded_weight(store):
    """store_dtype: W' = diag(gamma) W rounded once to that type (the backend uploads it as it is)."""
    import ml_dtypes
    from eetjit.plan.norm_linear import fold_norm_affine
    dt = np.dtype(np.float16 if store == "float16" else ml_dtypes.bfloat16)
    g = _norm_then_linear("LayerNorm")
    lin = next(n for n in g.nodes if n.op_type == "Linear")
    norm = next(n for n in g.nodes if n.op_type == "LayerNorm")
    W, gamma = lin.input(1).const, norm.input(1).const
    assert fold_norm_affine(g, dt) == 1
    got = lin.input(1).const
    assert got.dtype == dt
    want = (W * gamma[:, None].astype(np.float32)).astype(dt)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


# --- fold_producer_linear: the Linear making a residual summand goes into the NormLinear reading the sum ----------
@pytest.mark.parametrize("name, per_layer", [("gpt2-ts17-eager", 2), ("gpt2-dyn18-sdpa", 2),
                                             ("llama-dyn18-sdpa", 1)])
def test_fold_producer_counts(name, per_layer):
    """After fold_norm_linear, every residual NormLinear (add = 1) takes the Linear that makes its summand: GPT-2's
    ln_2 (the attention output projection) and every ln_1 but the first layer's (the previous MLP's down
    projection); LLaMA's input norms but the first. The first layer's ln_1 reads the embedding: left."""
    from eetjit.plan.norm_linear import fold_producer_linear
    gen, s = _generation_graph(name)
    fold_norm_linear(gen.graph)
    before = _hist(gen.graph)
    want = per_layer * len(s.layers) - 1
    assert fold_producer_linear(gen.graph) == want
    after = _hist(gen.graph)
    assert after["NormLinear"] == before["NormLinear"]
    assert after["Linear"] == before["Linear"] - want
    pre = [n for n in gen.graph.nodes if n.op_type == "NormLinear" and n.attrs.get("pre")]
    assert len(pre) == want and all(len(n.inputs) == 8 and n.input(6).is_const for n in pre)
    assert fold_producer_linear(gen.graph) == 0      # nothing left to fold


@pytest.mark.parametrize("name", ["gpt2-ts17-eager", "llama-dyn18-sdpa"])
def test_fold_producer_computes_the_same_logits(name):
    """The prompt pass with the producers folded equals the graph with only the norms folded (CPU backend)."""
    from eetjit.plan.norm_linear import fold_producer_linear
    gen, s = _generation_graph(name)
    fold_norm_linear(gen.graph)
    folded = gen.graph.copy()
    assert fold_producer_linear(folded) > 0
    _same_prompt_logits(gen, s, gen.graph, folded)


def _linear_then_norm_linear(summand=0, activation="none", split=False, extra_reader=False, output=False,
                             weight_const=True, bias_const=True):
    """A graph: Linear(x) -> z; AddLayerNorm(z, r) (z its input `summand`) -> Linear, folded by
    fold_norm_linear into a NormLinear; options that must keep the producer out."""
    rng = np.random.default_rng(4)
    g = Graph("t")
    K0, E, N = 6, 8, 12
    x, r = g.value("x", np.float32, (1, 2, K0)), g.value("r", np.float32, (1, 2, E))
    g.inputs = [x, r]
    N0 = 2 * E if split else E                   # split: [z, another output], z feeding the norm
    if weight_const:
        W0 = g.constant(values(rng, (K0, N0)), "W0")
    else:
        W0 = g.value("W0", np.float32, (K0, N0))
        g.inputs.append(W0)
    attrs = {"activation": activation}
    if split:
        attrs["split"] = [E, E]
    if bias_const:
        b0 = g.constant(values(rng, (N0,)), "b0")
    else:
        b0 = g.value("b0", np.float32, (N0,))
        g.inputs.append(b0)
    prod = g.add_node("Linear", [x, W0, b0], 2 if split else 1, attrs, domain="eet")
    z = prod.outputs[0]
    ins = [z, r] if summand == 0 else [r, z]
    norm = g.add_node("AddLayerNorm", ins + [g.constant(values(rng, (E,)), "gamma"),
                                             g.constant(values(rng, (E,)), "beta")], 2, {"epsilon": 1e-5},
                      domain="eet")
    lin = g.add_node("Linear", [norm.outputs[0], g.constant(values(rng, (E, N)), "W"),
                                g.constant(values(rng, (N,)), "bias")], 1, {"activation": "gelu_tanh"}, domain="eet")
    g.outputs = [lin.outputs[0], norm.outputs[1]] + list(prod.outputs[1:])
    if extra_reader:
        g.outputs.append(g.add_node("Identity", [z], 1).outputs[0])
    if output:
        g.outputs.append(z)
    assert fold_norm_linear(g) == 1
    return g


@pytest.mark.parametrize("summand", [0, 1])
def test_fold_producer_small_graph_numbers(summand):
    """One NormLinear with the producer's W0/b0 (either summand), equal to the pair it replaces (reference)."""
    from eetjit.plan.norm_linear import fold_producer_linear
    rng = np.random.default_rng(5)
    folded = _folds_into_one_node(_linear_then_norm_linear(summand), fold_producer_linear,
                                  {"x": values(rng, (1, 2, 6)), "r": values(rng, (1, 2, 8))})
    node = folded.nodes[0]
    assert node.attrs["pre"] == 1 and [v.name for v in node.inputs[:2]] == ["x", "r"]


@pytest.mark.parametrize("case", [dict(activation="relu"), dict(split=True), dict(extra_reader=True),
                                  dict(output=True), dict(weight_const=False), dict(bias_const=False)])
def test_fold_producer_leaves_alone(case):
    """A producer with an activation or split outputs, its output read by anything else or a graph output, or a
    weight or bias fed at run time: left as it is."""
    from eetjit.plan.norm_linear import fold_producer_linear
    g = _linear_then_norm_linear(**case)
    ops = [n.op_type for n in g.nodes]
    assert fold_producer_linear(g) == 0
    assert [n.op_type for n in g.nodes] == ops
