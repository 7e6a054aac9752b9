"""Norm -> Linear folding: a norm whose only reader is a Linear becomes one eet.NormLinear.

In a decoder every attention and MLP block starts with a norm (LayerNorm / RMSNorm, or the residual AddNorm of
the block before) read only by the block's first projection. A backend that can compute the norm inside that
projection (CudaBackend: gemv_nk's prologue, for the one-row GEMMs of a decode step) saves a launch per block;
its generation graph is folded (Generator, when the backend sets `fold_norm_linear`). Backends without a kernel
for it run the norm and the Linear one after another: the op's contract (eetjit.fused) is exactly that.

Folded only when the norm's normalized output is read by nothing but the Linear's x, is not a graph output, and
the Linear's weight and bias are constants (so the fused node, placed where the Linear was, depends on nothing
the norm's sum feeds).

`fold_producer_linear` goes one step further for a residual NormLinear: the Linear that makes one summand (the
attention output or MLP down projection) moves into the node, so a backend can add the residual in that GEMM's
epilogue and hand the row statistics to the next GEMM (CudaBackend's gemv_mma: no norm kernel in a decode step).

`fold_norm_affine` is the constant-side companion, run on a session's graph (CudaBackend in float16/bfloat16,
before any plan): each norm's gamma and beta go into the weights and biases of the Linears that read it, so the
norm computes the bare normalization and a GEMM can apply it per output (gemv_mma's folded prologue).
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


def fold_producer_linear(g: Graph) -> int:
    """Fold into each residual NormLinear (add = 1) the Linear that makes one of its two summands, in place: inputs
    6 and 7 become that Linear's W0 and bias b0, input 0 its x, input 1 the other summand (the residual), so the
    node computes sum = (x W0 + b0) + residual, then its norm and Linear as before. For a backend whose GEMM adds the
    residual in its epilogue and leaves the row statistics for the next GEMM's norm (CudaBackend,
    `fold_producer_linear`: a decode step's norm then costs no kernel of its own). Only a Linear without split or
    activation whose weight (and bias) are constants and whose output is read by nothing else and is not a graph
    output. Run after fold_norm_linear; returns the Linears folded."""
    made = 0
    for nl in [n for n in g.nodes if n.domain == "eet" and n.op_type == "NormLinear"]:
        if not nl.attrs.get("add") or nl.attrs.get("pre") or len(nl.inputs) > 6:
            continue
        for i in (0, 1):
            v = nl.inputs[i]
            lin = v.producer if v is not None else None
            if lin is None or lin.domain != "eet" or lin.op_type != "Linear" or lin.attrs.get("split") \
                    or (lin.attrs.get("activation") or "none") not in ("none", b"none") or len(v.users) != 1 \
                    or g.is_output(v) or lin.outputs[0] is not v or len(lin.outputs) != 1:
                continue
            W0, b0 = lin.input(1), lin.input(2)
            if W0 is None or not W0.is_const or (b0 is not None and not b0.is_const):
                continue
            ins = list(nl.inputs)
            ins = [lin.inputs[0], ins[1 - i]] + ins[2:6] + [None] * (6 - len(ins)) + [W0, b0]
            attrs = dict(nl.attrs, pre=1)
            g.add_node("NormLinear", ins, list(nl.outputs), attrs, domain="eet", name=f"{lin.name}+{nl.name}",
                       before=nl)
            g.remove_node(nl)
            g.remove_node(lin)
            made += 1
            break
    if made:
        g.remove_dead()
        g.toposort()
    return made


def fold_norm_affine(g: Graph, store_dtype=None) -> int:
    """Fold each norm's gamma and beta into the Linears that read it, in place: W' = diag(gamma) W, b' = beta W + b
    (float32; W' rounded once to `store_dtype` when given, the type the backend stores weights in), the norm then
    gamma = 1 and no beta. For a backend that applies the norm per output of its GEMM (CudaBackend,
    `fold_norm_affine`); done on the session's graph, before the plans of Session.run and of generation are made,
    so both share the one folded copy of each weight. Only where every reader of the normalized output is a Linear
    taking it as x with a constant weight (and bias) read by nothing else, the output is not a graph output, and
    gamma and beta are constants. Returns the norms folded."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from eetjit.codegen.workers import usable_cpus
    folds = []                  # (norm, gamma input index, gamma, beta, K, readers)
    for norm in [n for n in g.nodes if n.domain == "eet" and n.op_type in NORMS]:
        kind, add = NORMS[norm.op_type]
        gi = 2 if add else 1
        gamma = norm.input(gi)
        beta = norm.input(gi + 1) if kind == "layer" else None
        y = norm.outputs[0]
        users = list(y.users)
        if gamma is None or not gamma.is_const or (beta is not None and not beta.is_const) or not users \
                or g.is_output(y):
            continue
        K = np.size(gamma.const)
        if beta is None and np.all(np.asarray(gamma.const) == 1):
            continue                                # nothing to fold (or folded already)
        if (beta is not None and np.size(beta.const) != K) or not all(_foldable(lin, y, K) for lin in users):
            continue
        folds.append((norm, gi, gamma, beta, K, users))

    def fold(job):
        gamma, beta, lin = job
        b = lin.input(2)
        return folded_weights(gamma.const, None if beta is None else beta.const, lin.input(1).const,
                              None if b is None else b.const, store_dtype)
    # NumPy's multiply and cast let go of the GIL: the weights fold side by side (each reader's weight is read by
    # that reader alone, so the jobs share nothing)
    jobs = [(gamma, beta, lin) for _, _, gamma, beta, _, users in folds for lin in users]
    if not jobs:
        return 0
    with ThreadPoolExecutor(min(8, usable_cpus(), len(jobs))) as pool:
        results = iter(list(pool.map(fold, jobs)))    # every fold done (or raised) before the graph changes
    for norm, gi, gamma, beta, K, users in folds:
        for lin in users:
            W = lin.input(1)
            Wf, bias = next(results)
            g.set_input(lin, 1, g.constant(Wf, g.fresh_name(f"{W.name}/gamma")))
            if len(lin.inputs) < 3:
                lin.inputs.append(None)
            g.set_input(lin, 2, None if bias is None else g.constant(bias, g.fresh_name(f"{lin.name}/bias")))
        g.set_input(norm, gi, g.constant(np.ones(K, np.float32), g.fresh_name(f"{norm.name}/ones")))
        if beta is not None:
            g.set_input(norm, gi + 1, None)
    g.remove_dead()               # the unfolded weights, now read by nothing
    return len(folds)


def folded_weights(gamma, beta, W, bias, store_dtype=None):
    """(W', b') of a norm's gamma/beta folded into a Linear [K, N]: W' = diag(gamma) W (float32, or rounded once to
    `store_dtype`), b' = beta W + b (float32; None when the Linear has no bias and the norm no beta)."""
    import numpy as np
    Wh = np.asarray(W, np.float32)
    gv = np.asarray(gamma, np.float32).reshape(-1, 1)
    b = None if bias is None else np.asarray(bias, np.float32).reshape(-1)
    if beta is not None:
        bw = np.asarray(beta, np.float32).reshape(-1) @ Wh
        b = bw if b is None else b + bw
    if store_dtype is None:
        return Wh * gv, b
    # the float32 products rounded as NumPy's loop stores them: one pass, no float32 copy of the weight
    out = np.empty(Wh.shape, store_dtype)
    np.multiply(Wh, gv, out=out, casting="unsafe")
    return out, b


def _foldable(lin, y, K) -> bool:
    W = lin.input(1)
    b = lin.input(2) if len(lin.inputs) > 2 else None
    return (lin.domain == "eet" and lin.op_type == "Linear" and lin.inputs[0] is y and W is not None
            and W.is_const and len(W.users) == 1 and W.const.ndim == 2 and W.const.shape[0] == K
            and (b is None or (b.is_const and len(b.users) == 1 and b.const.size == W.const.shape[1])))
