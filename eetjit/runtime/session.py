"""`Session`: what `eetjit.compile` returns. ORT-style `run` over the fused graph, HF-style `generate`."""
from __future__ import annotations

import numpy as np

from eetjit.errors import InputError, ModelError
from eetjit.feeds import validate_feeds
from eetjit.ir import Graph
from eetjit.plan.norm_linear import fold_norm_affine
from eetjit.plan.structure import find_structure
from eetjit.reference.executor import check_supported
from eetjit.runtime.plan import ExecutionPlan


def make_backend(device: str, dtype: str, verbose: bool):
    if device == "cpu":
        from eetjit.backends.cpu import CpuBackend
        return CpuBackend(dtype=dtype, verbose=verbose)
    if device == "cuda":
        from eetjit.backends.cuda import CudaBackend
        return CudaBackend(dtype=dtype, verbose=verbose)
    raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")


class Session:
    """Runs one compiled model. Built by `eetjit.compile`."""

    def __init__(self, graph: Graph, fusion_report=None, device: str = "cpu", dtype: str = "float32",
                 max_batch: int = 8, max_seq_len: int = 1024, verbose: bool = True):
        check_supported(graph)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(max_seq_len, int) or max_seq_len < 2:
            raise InputError(f"max_seq_len must be an integer >= 2, got {max_seq_len!r}")
        self.graph = graph
        self.fusion_report = fusion_report
        self.device, self.dtype = device, dtype
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.verbose = verbose
        self.structure = find_structure(graph)
        self.backend = make_backend(device, dtype, verbose)
        if getattr(self.backend, "fold_norm_affine", False):
            # before any plan: Session.run and generation share the folded weights, stored as the backend stores them
            fold_norm_affine(graph, self.backend.dtype)
        self.plan = self._make_plan(graph)
        self._generator = None
        self._packed = None          # (plan,) of the packed encoder graph, built on first use
        self._captured = None        # CUDA: CapturedRuns (Session.run of repeated signatures on fixed buffers)
        self.stats = {"runs": 0, "packed_runs": 0}

    def _make_plan(self, graph: Graph) -> ExecutionPlan:
        return ExecutionPlan(graph, self.backend, verbose=self.verbose)

    def get_inputs(self):
        return list(self.graph.inputs)

    def get_outputs(self):
        return list(self.graph.outputs)

    def run(self, output_names, feeds) -> list[np.ndarray]:
        """ONNX-Runtime style: `output_names` None for all outputs; `feeds` {input name: array}."""
        feeds = validate_feeds(self.graph, feeds)
        s = self.structure
        if s is not None:
            ids = feeds[s.input_ids]
            if ids.size and (ids.min() < 0 or ids.max() >= s.vocab):
                bad = ids[(ids < 0) | (ids >= s.vocab)]
                raise InputError(f"input {s.input_ids!r}: token id(s) {bad[:5].tolist()} out of the vocabulary "
                                 f"[0, {s.vocab})")
            if s.max_positions is not None and ids.ndim == 2 and ids.shape[1] > s.max_positions:
                raise InputError(f"input {s.input_ids!r}: sequence length {ids.shape[1]} is over the model's "
                                 f"{s.max_positions} positions")
        self.stats["runs"] += 1
        plan = self.plan
        if s is not None and s.kind == "encoder" and s.attention_mask in feeds:
            mask = feeds[s.attention_mask]
            if mask.ndim == 2 and not mask.all() and self._packed_plan() is not None:
                from eetjit.fused.op_attention import pad_info
                from eetjit.plan.packing import INDEX
                pad_info(mask)  # rejects masks with holes, as the padded path does
                self.stats["packed_runs"] += 1
                plan = self._packed_plan()
                feeds = {**feeds, INDEX: np.flatnonzero(mask.reshape(-1)).astype(np.int64)}
        if self.device == "cuda":     # a repeated signature runs on fixed buffers, as one CUDA graph on a GPU
            if self._captured is None:
                from eetjit.runtime.cuda_graph import CapturedRuns
                self._captured = CapturedRuns(self.backend)
            outs = self._captured.run(plan, feeds, output_names)
        else:
            outs = plan.run(feeds, output_names)
        to_host = getattr(self.backend, "to_host", None)     # the CUDA backend hands back device arrays
        return outs if to_host is None else [to_host(o) for o in outs]

    def _packed_plan(self):
        """The plan of the packed encoder graph (eetjit.plan.packing), or None when packing does not apply."""
        if self._packed is None:
            from eetjit.plan.packing import specialize_for_packing
            g = specialize_for_packing(self.graph, self.structure)
            self._packed = (None if g is None else self._make_plan(g),)
        return self._packed[0]

    def generate(self, prompts, max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed=None, eos_token_id=None, stream: bool = False):
        """Greedy or sampled generation for a ragged batch of prompts (lists of token ids), EET pre-padding.

        Returns the full sequences (prompt + new tokens; a sequence stops after its eos), or with
        `stream=True` an iterator yielding each step's new token per sequence (None once it finished)."""
        if self.structure is None or self.structure.kind != "decoder":
            raise ModelError("generate() needs a decoder-only language model; this graph was not recognized as "
                             "one (see `eetjit inspect`)")
        if self._generator is None:
            if self.device == "cuda":   # decode steps as captured CUDA graphs (eetjit.runtime.cuda_graph)
                from eetjit.runtime.cuda_graph import CudaGenerator as Generator
            else:
                from eetjit.runtime.generate import Generator
            self._generator = Generator(self)
        return self._generator.generate(prompts, stream=stream, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                        eos_token_id=eos_token_id)
