#!/usr/bin/env python
"""Build small transformer models with deterministic random weights and export them to ONNX.

This is a development tool for eetjit; the runtime package never imports it.  It needs
torch, transformers, onnx and onnxruntime (only to check the exported files).

What it produces, for every cell of family x flavor x attention implementation:

* ``{out}/{family}-{flavor}-{attn}.onnx``  -- the exported graph.  ``ts14``/``ts17`` use the
  TorchScript exporter (``dynamo=False``) with all weights inline; ``dyn18``/``dyn23`` use the
  dynamo exporter and are saved the way it saves with ``external_data=True``: every
  initializer larger than 256 bytes (all weight matrices and embeddings) lives in
  ``{name}.onnx.data`` next to the model (relative location), smaller ones (norm weights,
  short biases, shape constants) stay inline.  This exercises the external-data path.
* ``{out}/{family}-{flavor}-{attn}.ref.npz`` -- the inputs used (``input_ids``,
  ``attention_mask`` and, for bert, ``token_type_ids``; int64 [3, 7]) and the output of the
  transformers model in torch fp32 for exactly those inputs (``logits`` float32 [3, 7, vocab]
  for gpt2/llama, ``last_hidden_state`` float32 [3, 7, hidden] for bert).  Decoders use LEFT
  padding (rows have 0, 2 and 5 pads), bert uses RIGHT padding with the same counts.  Note
  that the wrapper passes no ``position_ids``, so transformers uses positions 0..S-1 for
  every row, pads included.  Outputs at pad positions are whatever transformers computes
  there and should not be compared.
* ``{out}/{family}.config.json`` -- the HF config dict (``config.to_dict()``).
* ``{out}/EXPORT_FAILURES.md`` -- one row per cell that could not be exported (first line of
  the exporter's error), did not match, or that onnxruntime cannot run; or a note that every
  cell is fine.

After exporting, every file is run with onnxruntime (CPUExecutionProvider) on the reference
inputs and on three other (batch, seq) shapes -- (1, 1), (2, 12), (4, 3), padded the same
way -- and compared to torch on non-pad positions (max abs err < 1e-4 for tiny).  A failed
export or a mismatch is recorded and makes the script exit non-zero.  Where onnxruntime
refuses a graph that the ONNX reference semantics accept (opset-23 ``RotaryEmbedding`` whose
cos/sin caches have batch 1, as the dynamo exporter writes them for llama), the file is kept
as exported, checked with ``onnx.reference.ReferenceEvaluator`` instead, and listed in
EXPORT_FAILURES.md as "onnxruntime cannot run".

Families / flavors / attention implementations::

    gpt2  : GPT2LMHeadModel      inputs (input_ids, attention_mask)                 -> logits
    bert  : BertModel (no pooler) inputs (input_ids, attention_mask, token_type_ids) -> last_hidden_state
    llama : LlamaForCausalLM (GQA) inputs (input_ids, attention_mask)               -> logits
    flavors: ts14, ts17 (TorchScript, opset 14/17), dyn18, dyn23 (dynamo, opset 18/23)
    attn   : eager, sdpa

Weights depend only on (family, size, seed) -- not on the attention implementation -- so
``build_model(family, size, seed, attn)`` rebuilds exactly the model behind a fixture, e.g.
for greedy-generation tests against ``model.generate``::

    import importlib.util
    spec = importlib.util.spec_from_file_location("graphs_export", "graphs/export.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    model = mod.build_model("llama", size="tiny", seed=0, attn="eager")

Regenerating the committed tiny fixtures (from the repository root; about 1.5-2 minutes on
2 cores, almost all of it in the dynamo exporter; the output is byte-for-byte reproducible
with the same torch/transformers/onnxscript versions)::

    python graphs/export.py                      # all 24 tiny cells into graphs/
    python graphs/export.py --family gpt2 --flavor ts14,dyn23 --attn eager

Base-size models for benchmarks (never committed; default output ``graphs/large/``, which is
git-ignored)::

    python graphs/export.py --size base --family llama --flavor dyn18 --attn sdpa

``--ops-report PATH`` writes the union of op types, a per-file op histogram and the input /
output signatures of the produced files.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FAMILIES = ("gpt2", "bert", "llama")
FLAVORS = ("ts14", "ts17", "dyn18", "dyn23")
ATTNS = ("eager", "sdpa")
SIZES = ("tiny", "base")

# Shape of the reference batch and the pad counts per row.
REF_BATCH = 3
REF_SEQ = 7
REF_PADS = (0, 2, 5)

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

_CONFIG_KWARGS = {
    ("gpt2", "tiny"): dict(
        vocab_size=97, n_positions=128, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=1, eos_token_id=2,
    ),
    ("gpt2", "base"): dict(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        bos_token_id=50256, eos_token_id=50256,
    ),
    ("bert", "tiny"): dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", pad_token_id=0,
    ),
    ("bert", "base"): dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
        hidden_act="gelu", pad_token_id=0,
    ),
    ("llama", "tiny"): dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    ),
    ("llama", "base"): dict(
        vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, intermediate_size=2048, max_position_embeddings=2048,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    ),
}

# Per-family integer salt mixed into seeds so families don't share random streams.
_FAMILY_SALT = {"gpt2": 11, "bert": 23, "llama": 37}


def _check(family: str, size: str = "tiny", attn: str = "eager") -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    if attn not in ATTNS:
        raise ValueError(f"unknown attn {attn!r}; expected one of {ATTNS}")


def make_config(family: str, size: str = "tiny", attn: str = "eager"):
    """Return the transformers config for ``family``/``size`` with ``attn`` selected."""
    _check(family, size, attn)
    import transformers

    cls = {
        "gpt2": transformers.GPT2Config,
        "bert": transformers.BertConfig,
        "llama": transformers.LlamaConfig,
    }[family]
    config = cls(**_CONFIG_KWARGS[(family, size)])
    config._attn_implementation = attn
    return config


def output_name(family: str) -> str:
    return "last_hidden_state" if family == "bert" else "logits"


def input_names(family: str) -> tuple[str, ...]:
    if family == "bert":
        return ("input_ids", "attention_mask", "token_type_ids")
    return ("input_ids", "attention_mask")


# ---------------------------------------------------------------------------------------------
# Deterministic random weights
# ---------------------------------------------------------------------------------------------


def _normal(gen: torch.Generator, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    value = torch.randn(tuple(shape), generator=gen, dtype=torch.float32) * std + mean
    # fp32 randn does produce exact zeros now and then in the base-size models; nudge them so
    # that no parameter entry is zero.
    return torch.where(value == 0, torch.full_like(value, 1e-3 * std), value)


_LINEAR_GAIN = 2.0


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, hidden: int) -> None:
    """Re-initialize every parameter of ``model`` from a generator seeded with ``seed``.

    Scales (chosen so activations stay O(1), attention patterns are non-uniform and logits
    are well spread, hence no argmax ties):

    * Linear / GPT-2 Conv1D weights: normal(0, 2/sqrt(fan_in)); an untied ``lm_head``:
      normal(0, 3/sqrt(fan_in)).  The gain of 2 (rather than 1) makes the random network
      sensitive to its whole context: with gain 1 tiny GPT-2 greedily repeats one token
      forever, which would make generation tests weak.
    * embeddings (token, position, token type): normal(0, min(0.5, 3/sqrt(hidden)))
    * LayerNorm / RMSNorm weights: 1 + 0.1 * randn
    * every bias: 0.1 * randn (non-zero on purpose: the dynamo exporter drops zero biases)
    * anything else: normal(0, 0.05)

    Modules are visited in ``named_modules()`` order, which does not depend on the attention
    implementation, so the weights depend only on (model architecture, seed).  Tied
    parameters are initialized once (first owner wins).
    """
    gen = torch.Generator().manual_seed(int(seed))
    emb_std = min(0.5, 3.0 / math.sqrt(hidden))
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        kind = type(module).__name__
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            shape = param.shape
            if pname == "bias" or pname.endswith("bias"):
                value = _normal(gen, shape, 0.1)
            elif isinstance(module, nn.Embedding):
                value = _normal(gen, shape, emb_std)
            elif isinstance(module, nn.LayerNorm) or kind.endswith(("LayerNorm", "RMSNorm")):
                value = _normal(gen, shape, 0.1, mean=1.0)
            elif isinstance(module, nn.Linear) and pname == "weight":
                # An untied LM head gets gain 3 so logits are spread (std ~3).
                gain = 3.0 if mod_name.endswith("lm_head") else _LINEAR_GAIN
                value = _normal(gen, shape, gain / math.sqrt(shape[1]))
            elif kind == "Conv1D" and pname == "weight":  # GPT-2: weight is [in, out]
                value = _normal(gen, shape, _LINEAR_GAIN / math.sqrt(shape[0]))
            else:
                value = _normal(gen, shape, 0.05)
            param.copy_(value.to(param.dtype))
    for name, param in model.named_parameters():
        if bool((param == 0).any()):
            raise RuntimeError(f"parameter {name} has zero entries after init")


def build_model(family: str, size: str = "tiny", seed: int = 0, attn: str = "eager") -> nn.Module:
    """Return the transformers model for ``family``/``size`` with deterministic random weights.

    The weights depend only on (family, size, seed); ``attn`` ("eager" or "sdpa") only picks
    the attention implementation.  The model is fp32, on CPU, in eval mode.  Returns
    GPT2LMHeadModel, BertModel (without pooler) or LlamaForCausalLM.  The global torch RNG
    state is left untouched.
    """
    _check(family, size, attn)
    import transformers

    config = make_config(family, size, attn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "gpt2":
            model = transformers.GPT2LMHeadModel(config)
        elif family == "bert":
            model = transformers.BertModel(config, add_pooling_layer=False)
        else:
            model = transformers.LlamaForCausalLM(config)
    hidden = config.n_embd if family == "gpt2" else config.hidden_size
    init_weights(model, seed * 1000 + _FAMILY_SALT[family], hidden)
    model.to(torch.float32)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Export wrappers and reference inputs
# ---------------------------------------------------------------------------------------------


class DecoderWrapper(nn.Module):
    """(input_ids, attention_mask) -> logits, without KV cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Keywords only: in transformers 5 the second positional argument of GPT-2 is the cache.
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


class EncoderWrapper(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> last_hidden_state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            use_cache=False,
        )
        return out.last_hidden_state


def round_gemm_weights(model: nn.Module, dtype: str) -> nn.Module:
    """In place: the model an eetjit float16/bfloat16 CPU session computes. Every GEMM weight (nn.Linear,
    GPT-2's Conv1D, the LM head, untied from the embedding, which stays float32) is rounded to `dtype` (to
    nearest even) and kept in float32; for bfloat16 the GEMMs' inputs are rounded too (a forward pre-hook);
    everything else is unchanged."""
    from transformers.pytorch_utils import Conv1D
    to = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    with torch.no_grad():
        head = model.get_output_embeddings()
        if head is not None and head.weight is model.get_input_embeddings().weight:
            head.weight = nn.Parameter(head.weight.detach().clone())
        for module in model.modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                module.weight.copy_(module.weight.to(to).float())
                if dtype == "bfloat16":
                    module.register_forward_pre_hook(lambda _, args: (args[0].to(to).float(),) + args[1:])
    return model


def wrap(family: str, model: nn.Module) -> nn.Module:
    return (EncoderWrapper if family == "bert" else DecoderWrapper)(model).eval()


def make_inputs(family: str, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Reference inputs: int64 [3, 7]; decoders left-padded, bert right-padded (0/2/5 pads)."""
    rng = np.random.default_rng(seed * 1000 + _FAMILY_SALT[family] + 500)
    ids = rng.integers(3, vocab_size, size=(REF_BATCH, REF_SEQ), dtype=np.int64)
    mask = np.ones((REF_BATCH, REF_SEQ), dtype=np.int64)
    for row, pads in enumerate(REF_PADS):
        if pads == 0:
            continue
        if family == "bert":
            mask[row, REF_SEQ - pads:] = 0
        else:
            mask[row, :pads] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        inputs["token_type_ids"] = rng.integers(0, 2, size=(REF_BATCH, REF_SEQ), dtype=np.int64)
    return inputs


@torch.no_grad()
def reference_output(wrapper: nn.Module, family: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    args = [torch.from_numpy(inputs[n]) for n in input_names(family)]
    return wrapper(*args).detach().to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _flavor_parts(flavor: str) -> tuple[str, int]:
    if flavor.startswith("ts"):
        return "ts", int(flavor[2:])
    if flavor.startswith("dyn"):
        return "dyn", int(flavor[3:])
    raise ValueError(f"unknown flavor {flavor!r}")


def _remove(path: Path) -> None:
    if path.exists():
        path.unlink()


def export_onnx(wrapper: nn.Module, family: str, flavor: str, path: Path,
                inputs: dict[str, np.ndarray]) -> None:
    """Export ``wrapper`` to ``path`` with dynamic batch and sequence axes."""
    exporter, opset = _flavor_parts(flavor)
    names = input_names(family)
    out_name = output_name(family)
    example = {n: torch.from_numpy(inputs[n]) for n in names}
    data_path = path.with_name(path.name + ".data")
    _remove(path)
    _remove(data_path)

    if exporter == "ts":
        dynamic_axes = {n: {0: "batch", 1: "seq"} for n in names}
        dynamic_axes[out_name] = {0: "batch", 1: "seq"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(example[n] for n in names),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(names),
                output_names=[out_name],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        return

    import onnx

    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=_max_positions(wrapper.model.config))
    dynamic_shapes = {n: {0: batch, 1: seq} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (),
            kwargs=example,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=list(names),
            output_names=[out_name],
            optimize=True,
            verbose=False,
        )
    # Save the way the exporter does with external_data=True: initializers larger than the
    # onnx_ir threshold (256 bytes) go to ``{name}.onnx.data`` (relative location); small
    # tensors (shape constants, short biases) stay inline.  Forcing *everything* external
    # (size_threshold=0) breaks onnxruntime, whose shape inference cannot read external
    # int64 constants such as Unsqueeze axes.
    _strip_stack_traces(program.model)
    program.save(str(path), external_data=True)
    if not data_path.exists():
        # Nothing was written externally: externalize the float weights ourselves.
        model = onnx.load(str(path))
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path.name,
            size_threshold=256,
        )
    if not data_path.exists():
        raise RuntimeError(f"{path.name}: no external data file was written")


def _strip_stack_traces(model) -> None:
    """Drop the per-node ``pkg.torch.onnx.stack_trace`` metadata of a dynamo export.

    It holds absolute paths and line numbers of this script, torch and transformers, so the
    fixtures would change with every edit here and differ between machines.  The other
    exporter metadata (namespace, class_hierarchy, name_scopes, fx_node) is kept.
    """
    graphs = list(model.graphs())
    for graph in graphs:
        for node in graph:
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    for function in model.functions.values():
        for node in function:
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _max_positions(config) -> int:
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)


# ---------------------------------------------------------------------------------------------
# Checks and reports
# ---------------------------------------------------------------------------------------------


def valid_positions(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return inputs["attention_mask"].astype(bool)


class OnnxRunner:
    """Runs an ONNX file with onnxruntime (CPU); falls back to ``onnx.reference``.

    The fallback exists because onnxruntime rejects some graphs that the ONNX reference
    semantics accept (e.g. opset-23 ``RotaryEmbedding`` whose cos/sin caches have batch 1 and
    rely on broadcasting).  ``self.ort_error`` holds the first line of onnxruntime's error when
    the fallback is in use.
    """

    def __init__(self, path: Path):
        self.path = path
        self.ort_error: str | None = None
        self._sess = None
        self._ref = None
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            self._use_reference(exc)

    def _use_reference(self, exc: BaseException) -> None:
        from onnx.reference import ReferenceEvaluator

        self.ort_error = _first_line(exc)
        self._sess = None
        self._ref = ReferenceEvaluator(str(self.path))

    @property
    def name(self) -> str:
        return "onnxruntime" if self.ort_error is None else "onnx.reference"

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._sess is not None:
            feed = {i.name: inputs[i.name] for i in self._sess.get_inputs()}
            try:
                return self._sess.run(None, feed)[0]
            except Exception as exc:  # noqa: BLE001
                self._use_reference(exc)
        feed = {n: inputs[n] for n in self._ref.input_names}
        return self._ref.run(None, feed)[0]


def extra_inputs(family: str, vocab_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs with other (batch, seq) than the reference, to check the axes are really dynamic."""
    rng = np.random.default_rng(seed * 1000 + _FAMILY_SALT[family] + 900)
    cases = []
    for batch, seq, pads in ((1, 1, (0,)), (2, 12, (0, 4)), (4, 3, (1, 0, 2, 0))):
        ids = rng.integers(3, vocab_size, size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        for row, n in enumerate(pads):
            if n:
                if family == "bert":
                    mask[row, seq - n:] = 0
                else:
                    mask[row, :n] = 0
        case = {"input_ids": ids, "attention_mask": mask}
        if family == "bert":
            case["token_type_ids"] = rng.integers(0, 2, size=(batch, seq), dtype=np.int64)
        cases.append(case)
    return cases


def max_err(got: np.ndarray, want: np.ndarray, inputs: dict[str, np.ndarray]) -> float:
    if got.shape != want.shape:
        return float("inf")
    valid = valid_positions(inputs)
    diff = np.abs(got[valid].astype(np.float64) - want[valid].astype(np.float64))
    return float(np.max(diff)) if diff.size else 0.0


def _iter_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from _iter_nodes(sub)


def op_histogram(path: Path) -> collections.Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    hist: collections.Counter = collections.Counter()
    for node in _iter_nodes(model.graph):
        hist[(node.domain or "ai.onnx", node.op_type)] += 1
    for fn in model.functions:
        for node in fn.node:
            hist[(node.domain or "ai.onnx", node.op_type)] += 1
    return hist


def io_signature(path: Path) -> tuple[list[str], list[str], dict[str, int]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(vi) -> str:
        t = vi.type.tensor_type
        dims = []
        for d in t.shape.dim:
            dims.append(d.dim_param if d.dim_param else str(d.dim_value))
        return f"{vi.name}: {onnx.TensorProto.DataType.Name(t.elem_type).lower()}[{', '.join(dims)}]"

    inits = {i.name for i in model.graph.initializer}
    ins = [describe(v) for v in model.graph.input if v.name not in inits]
    outs = [describe(v) for v in model.graph.output]
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    return ins, outs, opsets


def write_ops_report(paths: list[Path], dest: Path | None) -> str:
    union: collections.Counter = collections.Counter()
    lines_files = []
    for p in paths:
        hist = op_histogram(p)
        union.update(hist)
        ins, outs, opsets = io_signature(p)
        lines_files.append(f"## {p.name}")
        lines_files.append(f"  opsets : {opsets}")
        lines_files.append(f"  inputs : {'; '.join(ins)}")
        lines_files.append(f"  outputs: {'; '.join(outs)}")
        lines_files.append(
            "  ops    : " + ", ".join(f"{d}::{o}={n}" if d != "ai.onnx" else f"{o}={n}"
                                      for (d, o), n in sorted(hist.items()))
        )
    head = [f"# op_type union over {len(paths)} files (domain::op  total-count  files-using)"]
    file_use: collections.Counter = collections.Counter()
    for p in paths:
        for key in op_histogram(p):
            file_use[key] += 1
    for (d, o), n in sorted(union.items()):
        head.append(f"{d}::{o:<24s} {n:6d} {file_use[(d, o)]:4d}")
    text = "\n".join(head) + "\n\n# per-file\n" + "\n".join(lines_files) + "\n"
    if dest is not None:
        dest.write_text(text)
    return text


def _sanity_check_reference(family: str, attn: str, ref: np.ndarray,
                            inputs: dict[str, np.ndarray]) -> None:
    """Reference outputs must be finite on real tokens, O(1), and (LMs) free of argmax ties."""
    valid = valid_positions(inputs)
    real = ref[valid]
    if not np.all(np.isfinite(real)):
        raise RuntimeError(f"{family}/{attn}: non-finite reference output on non-pad positions")
    msg = f"[ref] {family:<5s} {attn:<5s} std={real.std():.3f} max|x|={np.abs(real).max():.2f}"
    if family != "bert":
        top2 = np.sort(real, axis=-1)[:, -2:]
        gap = float(np.min(top2[:, 1] - top2[:, 0]))
        msg += f" min top-2 logit gap={gap:.3g}"
        if gap < 1e-3:
            raise RuntimeError(f"{family}/{attn}: near argmax tie in reference logits ({gap:.3g})")
    msg += f" pads finite={bool(np.all(np.isfinite(ref)))}"
    print(msg)


# Kinds of rows in EXPORT_FAILURES.md; all but the last make the script exit non-zero.
FAILED, RUN_FAILED, MISMATCH, TOO_LARGE, ORT_CANNOT_RUN = (
    "export failed", "run failed", "mismatch", "too large", "onnxruntime cannot run")
_FATAL = (FAILED, RUN_FAILED, MISMATCH, TOO_LARGE)


def _update_failures(path: Path, outcome: dict[str, tuple[str, str] | None],
                     full_grid: bool) -> None:
    """Maintain EXPORT_FAILURES.md: one table row per cell that failed or needed a fallback.

    A partial run (subset of families/flavors/attns) only replaces the rows of its cells.
    """
    rows: dict[str, tuple[str, str]] = {}
    if path.exists() and not full_grid:
        for line in path.read_text().splitlines():
            if line.startswith("| `"):
                parts = [p.strip() for p in line.strip().strip("|").split(" | ", 2)]
                if len(parts) == 3:
                    rows[parts[0].strip("`")] = (parts[1], parts[2])
    for cell, row in outcome.items():
        rows.pop(cell, None)
        if row is not None:
            rows[cell] = row
    lines = [
        "# Export failures",
        "",
        "Written by `graphs/export.py`.  One row per family-flavor-attn cell that could not be",
        "exported, did not run, did not match transformers, or that onnxruntime cannot run (such",
        "a file is kept exactly as the exporter wrote it and is checked with `onnx.reference`",
        "instead).  Messages are the first line of the error.",
        "",
    ]
    if rows:
        lines += ["| cell | kind | message |", "| --- | --- | --- |"]
        for cell, (kind, msg) in sorted(rows.items()):
            lines.append(f"| `{cell}` | {kind} | {msg.replace('|', '/')} |")
    else:
        lines.append("None: every cell exported, ran in onnxruntime and matched transformers.")
    path.write_text("\n".join(lines) + "\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:400]


def _split(arg: str | None, allowed: tuple[str, ...]) -> list[str]:
    if not arg:
        return list(allowed)
    items = [a.strip() for a in arg.split(",") if a.strip()]
    for a in items:
        if a not in allowed:
            raise SystemExit(f"unknown value {a!r}; expected one of {allowed}")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default graphs/ for tiny, graphs/large/ for base)")
    ap.add_argument("--size", choices=SIZES, default="tiny")
    ap.add_argument("--family", default=None, help="comma list of " + ",".join(FAMILIES))
    ap.add_argument("--flavor", default=None,
                    help="comma list of flavors " + ",".join(FLAVORS)
                    + " or cells flavor-attn, e.g. ts14-eager,dyn23")
    ap.add_argument("--attn", default=None, help="comma list of " + ",".join(ATTNS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=None,
                    help="max abs err onnxruntime vs torch on non-pad positions "
                         "(default 1e-4 tiny, 1e-3 base)")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ap.add_argument("--ops-report", type=Path, default=None,
                    help="write the op union, per-file op histogram and input/output "
                         "signatures of the produced files to this path (and print it)")
    args = ap.parse_args(argv)
    if args.tol is None:
        args.tol = 1e-4 if args.size == "tiny" else 1e-3

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    # The dynamo exporter logs one line per missing torchvision op on every export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    out = args.out or (HERE if args.size == "tiny" else HERE / "large")
    out.mkdir(parents=True, exist_ok=True)
    families = _split(args.family, FAMILIES)
    attns = _split(args.attn, ATTNS)
    # --flavor accepts plain flavors (crossed with --attn) or explicit flavor-attn cells.
    cells: list[tuple[str, str]] = []
    for item in (args.flavor.split(",") if args.flavor else list(FLAVORS)):
        item = item.strip()
        if not item:
            continue
        if "-" in item:
            fl, at = item.split("-", 1)
            _split(fl, FLAVORS), _split(at, ATTNS)
            cells.append((fl, at))
        else:
            _split(item, FLAVORS)
            cells += [(item, at) for at in attns]
    full_grid = (len(families) == len(FAMILIES) and len(set(cells)) == len(FLAVORS) * len(ATTNS))

    outcome: dict[str, tuple[str, str] | None] = {}
    table = []
    produced: list[Path] = []
    t_all = time.perf_counter()
    for family in families:
        for attn in ATTNS:
            if not any(a == attn for _, a in cells):
                continue
            model = build_model(family, args.size, args.seed, attn)
            wrapper = wrap(family, model)
            inputs = make_inputs(family, model.config.vocab_size, args.seed)
            extras = extra_inputs(family, model.config.vocab_size, args.seed)
            ref = reference_output(wrapper, family, inputs)
            _sanity_check_reference(family, attn, ref, inputs)
            (out / f"{family}.config.json").write_text(
                json.dumps(make_config(family, args.size, "eager").to_dict(), indent=2,
                           sort_keys=True, default=str) + "\n")
            for flavor, cell_attn in cells:
                if cell_attn != attn:
                    continue
                stem = f"{family}-{flavor}-{attn}"
                path = out / f"{stem}.onnx"
                t0 = time.perf_counter()
                try:
                    export_onnx(wrapper, family, flavor, path, inputs)
                except Exception as exc:  # noqa: BLE001 - recorded, not hidden
                    outcome[stem] = (FAILED, _first_line(exc))
                    table.append((stem, FAILED, outcome[stem][1], time.perf_counter() - t0))
                    _remove(out / f"{stem}.ref.npz")
                    continue
                t_export = time.perf_counter() - t0
                np.savez(out / f"{stem}.ref.npz", **inputs, **{output_name(family): ref})
                produced.append(path)
                outcome[stem] = None
                nbytes = _file_bytes(path)
                if args.size == "tiny" and nbytes > 2 * 1024 * 1024:
                    outcome[stem] = (TOO_LARGE, f"{nbytes / 1e6:.2f} MB > 2 MB")
                if args.no_check:
                    table.append((stem, "exported", "", t_export))
                    continue
                try:
                    runner = OnnxRunner(path)
                    err = max_err(runner.run(inputs), ref, inputs)
                    for case in extras:
                        want = reference_output(wrapper, family, case)
                        err = max(err, max_err(runner.run(case), want, case))
                except Exception as exc:  # noqa: BLE001
                    outcome[stem] = (RUN_FAILED, _first_line(exc))
                    table.append((stem, RUN_FAILED, outcome[stem][1], t_export))
                    continue
                detail = f"max|onnx-torch|={err:.2e} ({runner.name})"
                if err >= args.tol:
                    outcome[stem] = (MISMATCH, f"{runner.name} vs torch: max abs err {err:.3g}"
                                               f" >= {args.tol:g}")
                elif runner.ort_error is not None and outcome[stem] is None:
                    outcome[stem] = (ORT_CANNOT_RUN, f"{runner.ort_error} -- checked with "
                                                     f"onnx.reference: max abs err {err:.2e}")
                status = "ok" if outcome[stem] is None else outcome[stem][0]
                table.append((stem, status, detail, t_export))

    print(f"\n{'cell':<24s} {'status':<22s} {'export s':>8s} {'MB':>6s}  detail")
    for stem, status, detail, secs in table:
        path = out / f"{stem}.onnx"
        mb = _file_bytes(path) / 1e6 if path.exists() else 0.0
        print(f"{stem:<24s} {status:<22s} {secs:8.1f} {mb:6.2f}  {detail}")
    print(f"total {time.perf_counter() - t_all:.1f} s")

    _update_failures(out / "EXPORT_FAILURES.md", outcome, full_grid)
    if args.ops_report is not None:
        text = write_ops_report(sorted(produced), args.ops_report)
        print(text)
    return 1 if any(v is not None and v[0] in _FATAL for v in outcome.values()) else 0


def _file_bytes(path: Path) -> int:
    """Size of an ONNX file plus its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


if __name__ == "__main__":
    sys.exit(main())
