"""Model structure: recognizes a fused graph as a decoder-only LM or an encoder.

The runtime needs, without looking at the raw ONNX again: which input is `input_ids` / `attention_mask` /
`token_type_ids`, the value carrying positions (to feed its own in pre-padding generation), the attention
nodes in layer order with heads/kv heads/head dim, hidden size, vocabulary, the logits output, and whether
the LM head is tied to the token embedding.
"""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field

import numpy as np

from eetjit.ir import Graph, Value


@dataclass
class Layer:
    attention: str
    num_heads: int
    kv_num_heads: int
    head_dim: int
    causal: bool


@dataclass
class Structure:
    kind: str                                   # "decoder" | "encoder"
    input_ids: str
    attention_mask: str | None
    token_type_ids: str | None
    output: str                                 # logits (decoder) or last hidden state (encoder)
    hidden: int
    vocab: int
    num_layers: int
    layers: list[Layer] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)   # values that carry positions (Embedding / Rotary inputs)
    max_positions: int | None = None            # rows of the position table, when there is one
    lm_head: str | None = None                  # the Linear node producing logits
    tied_lm_head: bool = False
    rotary: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _graph_input(graph: Graph, v: Value | None) -> Value | None:
    """Follow pass-through ops (Cast/Unsqueeze/Reshape of an input) back to a graph input."""
    seen = 0
    while v is not None and seen < 8:
        if v in graph.inputs:
            return v
        p = v.producer
        if p is None or p.op_type not in ("Cast", "Unsqueeze", "Reshape", "Expand", "Identity"):
            return None
        v = p.inputs[0]
        seen += 1
    return None


_TIED_BLOCK = 256      # vocabulary rows compared per step of the full check
_TIED_SAMPLES = 64     # vocabulary rows compared before the full check
_tied_memo: list = []  # [(weakref(w), weakref(wte), result)] of the last check, for read-only arrays only


def _equal_transposed(w: np.ndarray, wte: np.ndarray) -> bool:
    """`np.array_equal(w, wte.T)` for w [hidden, vocab] and wte [vocab, hidden], same answer, faster.

    Same object or the same memory seen transposed: equal without reading it. Otherwise a sample of vocabulary
    rows first (an untied head differs there almost surely), then every row, block by block (`w[:, i:j].T`
    against contiguous rows of wte: ~3x faster than comparing against the strided `wte.T` in one go)."""
    if w.shape != wte.T.shape:
        return False
    wt = w.T
    if (wt is wte or (wt.__array_interface__["data"][0] == wte.__array_interface__["data"][0]
                      and wt.strides == wte.strides and wt.dtype == wte.dtype)):
        # the same bytes read the same way; NaN is the one value not equal to itself
        return not (np.issubdtype(wte.dtype, np.inexact) and np.isnan(wte).any())
    vocab = wte.shape[0]
    rows = np.unique(np.linspace(0, vocab - 1, min(vocab, _TIED_SAMPLES)).astype(np.int64))
    if not np.array_equal(wt[rows], wte[rows]):
        return False
    for i in range(0, vocab, _TIED_BLOCK):
        if not np.array_equal(wt[i:i + _TIED_BLOCK], wte[i:i + _TIED_BLOCK]):
            return False
    return True


def tied_to_embedding(w: np.ndarray, wte: np.ndarray) -> bool:
    """Whether the LM head weight w is the token embedding transposed, remembered for the last pair of
    read-only arrays (`fuse` and `Session` both call find_structure on the same graph; the loader's weights
    are read-only arrays, and rewrites replace constants rather than write into them)."""
    frozen = not w.flags.writeable and not wte.flags.writeable
    if frozen and _tied_memo:
        rw, rwte, result = _tied_memo[0]
        if rw() is w and rwte() is wte:
            return result
    result = _equal_transposed(w, wte)
    if frozen:
        try:
            _tied_memo[:] = [(weakref.ref(w), weakref.ref(wte), result)]
        except TypeError:
            pass
    return result


def find_structure(graph: Graph) -> Structure | None:
    """The Structure of a fused transformer graph, or None when the graph is not one."""
    emb = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Embedding"]
    attn = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Attention"]
    if len(emb) != 1 or not attn or len(graph.outputs) < 1:
        return None
    e = emb[0]
    ids = _graph_input(graph, e.inputs[0])
    if ids is None:
        return None
    wte = e.inputs[2].const if e.input(2) is not None else None
    if wte is None:
        return None
    vocab, hidden = wte.shape
    type_ids = _graph_input(graph, e.input(4)) if e.input(4) is not None else None
    pad = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "PadInfo"]
    mask = _graph_input(graph, pad[0].inputs[0]) if pad else None
    if mask is None:
        mask = next((v for v in graph.inputs if "mask" in v.name), None)
    causal = {bool(n.attrs.get("causal", 0)) for n in attn}
    if len(causal) != 1:
        return None
    kind = "decoder" if causal.pop() else "encoder"
    layers = [Layer(n.name, int(n.attrs["num_heads"]), int(n.attrs.get("kv_num_heads", n.attrs["num_heads"])),
                    int(n.attrs["head_dim"]), bool(n.attrs.get("causal", 0))) for n in attn]
    positions: list[str] = []
    if e.input(1) is not None:
        positions.append(e.inputs[1].name)
    rot = [n for n in graph.nodes if n.domain == "eet" and n.op_type == "Rotary"]
    for n in rot:
        if n.inputs[1].name not in positions:
            positions.append(n.inputs[1].name)
    wpe = e.input(3)
    out = graph.outputs[0]
    lm_head, tied = None, False
    if kind == "decoder":
        p = out.producer
        if p is not None and p.domain == "eet" and p.op_type == "Linear":
            lm_head = p.name
            w = p.inputs[1].const
            tied = w is not None and w.shape == (hidden, vocab) and tied_to_embedding(w, wte)
    return Structure(kind=kind, input_ids=ids.name, attention_mask=None if mask is None else mask.name,
                     token_type_ids=None if type_ids is None else type_ids.name, output=out.name, hidden=int(hidden),
                     vocab=int(vocab), num_layers=len(attn), layers=layers, positions=positions,
                     max_positions=None if wpe is None or wpe.const is None else int(wpe.const.shape[0]),
                     lm_head=lm_head, tied_lm_head=bool(tied), rotary=bool(rot))


def recognize(graph: Graph) -> dict | None:
    s = find_structure(graph)
    return None if s is None else s.to_dict()
