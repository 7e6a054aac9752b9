"""The packed encoder graph: a padded batch costs what its real tokens cost.

The fused encoder graph is specialized so that everything row-wise (norms, Linears, residual adds) runs
on the packed [1, N, E] activations of the N real tokens: eet.Pack after the Embedding, eet.Unpack to the
padded layout only around each Attention (which skips pad columns through its ranges, and may skip pad query rows:
its result goes straight to a Pack, attribute pad_rows_unused) and at the output (zeros at pads). Packing is only applied when every op between Pack and Unpack is row-wise; otherwise
the session runs the padded graph.
"""
from __future__ import annotations

import numpy as np

from eetjit.ir import Graph
from eetjit.plan.structure import Structure

INDEX = "eet_index"
ROW_WISE = {"LayerNorm", "AddLayerNorm", "RMSNorm", "AddRMSNorm", "Linear", "SwiGLU"}


def specialize_for_packing(fused: Graph, s: Structure) -> Graph | None:
    """The packed graph (same inputs plus `eet_index` [N]), or None when the graph does not allow it."""
    if s.kind != "encoder":
        return None
    g = fused.copy()
    ids = g.values[s.input_ids]
    emb = [n for n in g.nodes if n.domain == "eet" and n.op_type == "Embedding"]
    attn = [n for n in g.nodes if n.domain == "eet" and n.op_type == "Attention"]
    if len(emb) != 1 or len(g.outputs) != 1:
        return None
    index = g.value(INDEX, np.int64, ("tokens",))

    def pack_after(v, before):
        packed = g.value(f"{v.name}/packed", v.dtype, None)
        g.add_node("Pack", [v, index], [packed], domain="eet", name=g.fresh_name("pack"), before=before)
        return packed

    # Packed hidden states from the embedding on.
    h = emb[0].outputs[0]
    users = list(h.users)
    first_user = min(users, key=g.nodes.index) if users else None
    if first_user is None:
        return None
    hp = pack_after(h, first_user)
    for u in users:
        for i, v in enumerate(u.inputs):
            if v is h:
                g.set_input(u, i, hp)
    # Around each attention: unpack q, k, v; pack the result. Pack reads only the real rows of the result, so the
    # attention may leave its pad rows unwritten (attribute pad_rows_unused: query tiles of pads cost nothing).
    for node in attn:
        node.attrs["pad_rows_unused"] = 1
        for i in range(3):
            v = node.inputs[i]
            up = g.value(f"{v.name}/unpacked_{node.name}_{i}", v.dtype, None)
            g.add_node("Unpack", [v, index, ids], [up], domain="eet", name=g.fresh_name("unpack"), before=node)
            g.set_input(node, i, up)
        y = node.outputs[0]
        readers = list(y.users)
        yp = g.value(f"{y.name}/packed", y.dtype, None)
        nxt = g.nodes[g.nodes.index(node) + 1]
        g.add_node("Pack", [y, index], [yp], domain="eet", name=g.fresh_name("pack"), before=nxt)
        for u in readers:
            for i, v in enumerate(u.inputs):
                if v is y:
                    g.set_input(u, i, yp)
    out = g.outputs[0]
    full = g.value(f"{out.name}/padded", out.dtype, out.shape)
    g.add_node("Unpack", [out, index, ids], [full], domain="eet", name=g.fresh_name("unpack"))
    g.outputs = [full]
    # Safety: between Pack and Unpack only row-wise ops may read packed values.
    packed = {id(v) for n in g.nodes if n.op_type == "Pack" for v in n.outputs}
    changed = True
    while changed:
        changed = False
        for n in g.nodes:
            if n.op_type in ("Unpack",) or not any(v is not None and id(v) in packed for v in n.inputs):
                continue
            if n.domain != "eet" or n.op_type not in ROW_WISE:
                return None
            for o in n.outputs:
                if id(o) not in packed:
                    packed.add(id(o))
                    changed = True
    g.inputs = g.inputs + [index]
    g.remove_dead()
    g.toposort()
    # the public output keeps its name
    del g.values[full.name]
    out.name, full.name = out.name + "/packed_out", out.name
    g.values[out.name], g.values[full.name] = out, full
    return g
