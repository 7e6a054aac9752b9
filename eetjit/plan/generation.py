"""The generation graph: the fused decoder graph specialized for pre-padding generation over a KV cache.

One graph serves the prompt pass (S = P, step = 0) and every decode step (S = 1, step = P + t):
- the values that carried positions (Embedding / Rotary inputs, computed in the export as 0..S-1) now read
  the runtime's `eet_positions[B, S]` (token j of a sequence gets position j, pads 0 — what Hugging Face
  derives from the attention mask);
- each eet.Attention becomes eet.CachedAttention over that layer's cache (`eet_k_cache_<i>`,
  `eet_v_cache_<i>`, [B, Hkv, T, D]) with `eet_start[B]` (pad counts) and `eet_step[1]`; the mask
  subgraph and PadInfo become dead and are dropped: no mask tensor exists (a Shape of the mask, which some
  exports use for reshape targets, reads input_ids instead: same shape);
- the LM head reads only the last column (eet.LastToken), so a prompt pass computes B logits rows, not B*P.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eetjit.errors import ModelError
from eetjit.ir import Graph
from eetjit.plan.structure import Structure

POSITIONS, START, STEP = "eet_positions", "eet_start", "eet_step"


def cache_names(layer: int) -> tuple[str, str]:
    return f"eet_k_cache_{layer}", f"eet_v_cache_{layer}"


@dataclass
class GenerationGraph:
    graph: Graph
    structure: Structure
    input_ids: str
    extra_inputs: tuple[str, ...]     # inputs besides input_ids, positions, start, step and the caches


def specialize_for_generation(fused: Graph, s: Structure) -> GenerationGraph:
    if s.kind != "decoder":
        raise ModelError("generate() needs a decoder-only LM; this model was recognized as an encoder")
    g = fused.copy()
    ids = g.values[s.input_ids]
    positions = g.value(POSITIONS, np.int64, ("batch", "seq"))
    start = g.value(START, np.int64, ("batch",))
    step = g.value(STEP, np.int64, (1,))
    for name in s.positions:
        g.replace_all_uses(g.values[name], positions)
    new_inputs = [ids, positions, start, step]
    attn = [n for n in g.nodes if n.domain == "eet" and n.op_type == "Attention"]
    for i, node in enumerate(attn):
        Hkv, D = node.attrs.get("kv_num_heads", node.attrs["num_heads"]), node.attrs["head_dim"]
        kname, vname = cache_names(i)
        kc = g.value(kname, None, ("batch", Hkv, "max_seq_len", D))
        vc = g.value(vname, None, ("batch", Hkv, "max_seq_len", D))
        new_inputs += [kc, vc]
        attrs = {k: node.attrs[k] for k in ("num_heads", "kv_num_heads", "head_dim", "scale") if k in node.attrs}
        attrs["layer"] = i
        out = g.value(f"cached_attention_{i}", node.outputs[0].dtype, node.outputs[0].shape)
        g.add_node("CachedAttention", [node.inputs[0], node.inputs[1], node.inputs[2], kc, vc, start, step], [out],
                   attrs, domain="eet", name=f"{node.name}/cached", before=node)
        g.replace_all_uses(node.outputs[0], out)
    if s.lm_head is not None:
        head = next(n for n in g.nodes if n.name == s.lm_head)
        last = g.value("last_token", head.inputs[0].dtype, None)
        g.add_node("LastToken", [head.inputs[0]], [last], {}, domain="eet", name="last_token", before=head)
        g.set_input(head, 0, last)
    g.inputs = new_inputs
    g.remove_dead()
    if s.attention_mask is not None and s.attention_mask in g.values:
        # Exports may take a reshape target from Shape(attention_mask); its shape is input_ids' shape.
        mask = g.values[s.attention_mask]
        if all(u.op_type == "Shape" for u in mask.users):
            g.replace_all_uses(mask, ids)
    g.toposort()
    leftover = [n for n in g.nodes if any(v is not None and not v.is_const and v.producer is None
                                          and v not in g.inputs for v in n.inputs)]
    if leftover:
        names = sorted({v.name for n in leftover for v in n.inputs if v is not None and v.producer is None
                        and not v.is_const and v not in g.inputs})
        raise ModelError(f"generation graph still reads {names}: the model's mask/positions could not be replaced")
    return GenerationGraph(g, s, s.input_ids, ())
