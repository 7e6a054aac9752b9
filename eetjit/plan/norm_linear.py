"""Norm -> Linear folding: a norm whose only reader is a Linear becomes one eet.NormLinear.

In a decoder every attention and MLP block starts with a norm (LayerNorm / RMSNorm, or the residual AddNorm of
the block before) read only by the block's first projection. A backend that can compute the norm inside that
projection (CudaBackend: gemv_nk's prologue, for the one-row GEMMs of a decode step) saves a launch per block;
its generation graph is folded (Generator, when the backend sets `fold_norm_linear`). Backends without a kernel
for it run the norm and the Linear one after another: the op's contract (eetjit.fused) is exactly that.

Folded only when the norm's normalized output is read by nothing but the Linear's x, is not a graph output, and
the Linear's weight and bias are constants (so the fused node, placed where the Linear was, depends on nothing
the norm's sum feeds).
"""
from __future__ import annotations

from eetjit.ir import Graph

NORMS = {"LayerNorm": ("layer", False), "AddLayerNorm": ("layer", True), "RMSNorm": ("rms", False),
         "AddRMSNorm": ("rms", True)}


def fold_norm_linear(g: Graph) -> int:
    """Fold in place; returns the number of NormLinear nodes made."""
    made = 0
    for norm in [n for n in g.nodes if n.domain == "eet" and n.op_type in NORMS]:
        y = norm.outputs[0]
        users = list(y.users)
        if len(users) != 1 or g.is_output(y):
            continue
        lin = users[0]
        if lin.domain != "eet" or lin.op_type != "Linear" or lin.inputs[0] is not y:
            continue
        if any(v is not None and not v.is_const for v in lin.inputs[1:3]):
            continue
        kind, add = NORMS[norm.op_type]
        ins = list(norm.inputs)
        a, b = (ins[0], ins[1]) if add else (ins[0], None)
        rest = ins[2:] if add else ins[1:]
        gamma = rest[0]
        beta = rest[1] if kind == "layer" and len(rest) > 1 else None
        attrs = {"norm": kind, "add": int(add), "epsilon": norm.attrs.get("epsilon", 1e-5 if kind == "layer"
                                                                             else 1e-6)}
        attrs.update({k: lin.attrs[k] for k in ("activation", "split") if k in lin.attrs})
        outputs = list(lin.outputs) + ([norm.outputs[1]] if add else [])
        weights = [lin.input(1), lin.input(2)]
        g.add_node("NormLinear", [a, b, gamma, beta] + weights, outputs, attrs, domain="eet",
                   name=f"{norm.name}+{lin.name}", before=lin)
        g.remove_node(lin)
        g.remove_node(norm)
        made += 1
    if made:
        g.remove_dead()
        g.toposort()
    return made
