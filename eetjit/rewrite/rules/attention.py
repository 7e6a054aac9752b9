"""Attention: scaled dot-product attention, decomposed (eager and sdpa exports) or the ONNX Attention op
(opset 23) → eet.Attention. Lowers to templates/*/attention.py.j2.

Decomposed, anchored on the Softmax:
    scores = MatMul(q_BHSD, kT_BHDS)                 q/k maybe pre-scaled by sqrt(scale) each
             [* or / scalar] [+ mask | Where(mask, ., -big)] [Cast]      in any order
    p      = Softmax(scores, last axis) [Cast] [Where(IsNaN(p), 0, p)]   (sdpa's fully-masked-row fix-up)
    y      = MatMul(p, v_BHSD) → Transpose/Reshape views → [B, S, H*D] (or [B*S, H*D])
The head split/merge views (and GQA's repeat_kv) are checked by tracing index codes through them (`_layout`),
the mask by evaluating it on probe batches (`_mask`); the result reads the [B, S, ·] projections directly:
    y = eet.Attention(q, k, v, eet.PadInfo(attention_mask))   (one PadInfo per graph, shared by the layers)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eetjit.ir import Graph, Node, Value
from eetjit.rewrite.pattern import Match, scalar
from eetjit.rewrite.rule import Rule, _take_name, outside_consumer
from eetjit.rewrite.rules import _layout, _mask
from eetjit.rewrite.rules._layout import float_cast, scalar_factor
from eetjit.rewrite.rules._probe import LAYOUT_CONFIG, ProbeError, base_probe, data_input

TEMPLATE = "attention"


@dataclass
class Site:
    """One attention instance, as found structurally (before any probing)."""
    anchor: Node
    q: Value                         # operands as consumed: q [B,H,S,D], k^T [B,H,D,T] (or k [B,H,T,D]), v
    k: Value
    v: Value
    out: Value                       # [B, H, S, D] result before the heads are merged (3-D ONNX: [B, S, H*D])
    covered: list[Node]
    k_transposed: bool = True
    factor: float = 1.0              # scalar factors on the scores path
    scale_attr: float | None = None  # ONNX Attention: its scale (None: 1/sqrt(D)); decomposed: unused
    terms: list[_mask.Term] = field(default_factory=list)
    causal_attr: bool = False
    heads_3d: tuple[int, int] | None = None   # ONNX Attention on [B, S, H*D] operands: (q heads, kv heads)
    softmax_axis: int = -1


@dataclass
class Plan:
    """What the rewrite needs, once the site is verified."""
    q: Value
    k: Value
    v: Value
    merged: Value                    # the value the fused op replaces
    merged_rank: int                 # 3: [B, S, E]; 2: [B*S, E]
    num_heads: int
    kv_num_heads: int
    head_dim: int
    scale: float
    mask: _mask.MaskInfo


class AttentionMatch(Match):
    plan: Plan | None = None


# --- finding the site -----------------------------------------------------------------------------------------

def _leads_to_qk(v: Value, depth: int = 8) -> bool:
    """Whether `v` is (a scaled / masked / cast form of) a MatMul of two activations."""
    for _ in range(depth):
        n = v.producer
        if n is None or n.domain != "":
            return False
        if n.op_type == "MatMul":
            return all(x is not None and not x.is_const for x in n.inputs)
        if float_cast(n) or scalar_factor(n) is not None:
            v = data_input(n)
        elif n.op_type == "Add":
            return any(_leads_to_qk(x, depth - 1) for x in n.inputs if x is not None)
        elif n.op_type == "Where" and len(n.inputs) == 3:
            branches = [x for x in n.inputs[1:] if x is not None and not x.is_const]
            if len(branches) != 1:
                return False
            v = branches[0]
        else:
            return False
    return False


def _scores_path(z: Value):
    """Walk up from the Softmax input to the q·k MatMul: (matmul node, path nodes, factor, mask terms)."""
    covered: list[Node] = []
    terms: list[_mask.Term] = []
    factor = 1.0
    cur = z
    for _ in range(32):
        n = cur.producer
        if n is None or n.domain != "":
            return f"the Softmax input {z.name!r} is not computed from a MatMul of q and k"
        if n.op_type == "MatMul":
            if any(x is None or x.is_const for x in n.inputs):
                return f"MatMul {n.name!r} before the Softmax multiplies by a constant, not q by k"
            return n, covered, factor, terms
        if float_cast(n):
            covered.append(n)
            cur = n.inputs[0]
            continue
        f = scalar_factor(n)
        if f is not None:
            if f <= 0:
                return f"the scores are scaled by {f:g}, not a positive number"
            covered.append(n)
            factor *= f
            cur = data_input(n)
            continue
        if n.op_type == "Add" and len(n.inputs) == 2:
            a, b = n.inputs
            la, lb = _leads_to_qk(a), _leads_to_qk(b)
            if la == lb:
                return f"cannot tell the scores from the mask at {n.name!r} (Add)"
            scores, m = (a, b) if la else (b, a)
            terms.append(_mask.Term("add", m, factor))
            covered.append(n)
            cur = scores
            continue
        if n.op_type == "Where" and len(n.inputs) == 3:
            c, x, y = n.inputs
            if y is not None and y.is_const and x is not None and not x.is_const:
                keep, fill, s = True, y, x
            elif x is not None and x.is_const and y is not None and not y.is_const:
                keep, fill, s = False, x, y
            else:
                return f"Where {n.name!r} on the scores does not fill with a constant"
            fv = scalar(fill.const)
            if fv is None or not fv * factor <= _mask.NEG:
                return f"Where {n.name!r} fills masked scores with {fv}, not a large negative number"
            terms.append(_mask.Term("where", c, factor, keep))
            covered.append(n)
            cur = s
            continue
        return f"unexpected {n.op_type} {n.name!r} between the q·k MatMul and the Softmax"
    return "the path from the Softmax to the q·k MatMul is too long"


def _probs_path(graph: Graph, p: Value):
    """Walk down from the Softmax output to the MatMul with v: (pv node, path nodes) or a reason."""
    covered: list[Node] = []
    cur = p
    for _ in range(8):
        if graph.is_output(cur):
            return f"the attention probabilities {cur.name!r} are a graph output"
        users = cur.users
        if len(users) == 1 and float_cast(users[0]):
            covered.append(users[0])
            cur = users[0].outputs[0]
            continue
        if len(users) == 2:
            isnan = next((u for u in users if u.op_type == "IsNaN"), None)
            where = next((u for u in users if u.op_type == "Where"), None)
            if (isnan is not None and where is not None and len(where.inputs) == 3
                    and where.inputs[0] is isnan.outputs[0] and where.inputs[2] is cur
                    and where.inputs[1] is not None and where.inputs[1].is_const
                    and scalar(where.inputs[1].const) == 0.0 and len(isnan.outputs[0].users) == 1):
                covered += [isnan, where]
                cur = where.outputs[0]
                continue
        break
    mm = [u for u in cur.users if u.op_type == "MatMul" and u.domain == "" and u.inputs[0] is cur]
    if len(cur.users) != 1 or not mm:
        names = ", ".join(f"{u.name!r} ({u.op_type})" for u in cur.users) or "nothing"
        return f"the attention probabilities {cur.name!r} are used by {names}, not by one MatMul with v"
    if mm[0].inputs[1] is None or mm[0].inputs[1].is_const:
        return f"MatMul {mm[0].name!r} multiplies the probabilities by a constant, not by v"
    return mm[0], covered


def _near_qk(v: Value, hops: int = 6) -> bool:
    """A MatMul of two activations within a few producers of `v` (else this Softmax is not attention, and
    not worth a near-miss line: a classifier head, a router...)."""
    frontier = [v]
    for _ in range(hops):
        nxt = []
        for x in frontier:
            n = x.producer
            if n is None or x.is_const:
                continue
            if n.op_type == "MatMul" and all(i is not None and not i.is_const for i in n.inputs):
                return True
            if n.op_type not in ("Shape", "Size"):
                nxt.extend(i for i in n.inputs if i is not None)
        frontier = nxt
    return False


def _softmax_site(graph: Graph, node: Node) -> Site | str | None:
    if node.domain != "" or not _near_qk(node.inputs[0]):
        return None
    axis = node.attrs.get("axis", -1 if graph.opset() >= 13 else 1)
    found = _scores_path(node.inputs[0])
    if isinstance(found, str):
        return found
    qk, s_nodes, factor, terms = found
    down = _probs_path(graph, node.outputs[0])
    if isinstance(down, str):
        return down
    pv, p_nodes = down
    return Site(node, qk.inputs[0], qk.inputs[1], pv.inputs[1], pv.outputs[0],
                [qk] + s_nodes + [node] + p_nodes + [pv], True, factor, None, terms, False, softmax_axis=axis)


def _onnx_site(graph: Graph, node: Node) -> Site | str | None:
    if node.domain != "":
        return None  # eet.Attention shares the op name
    ins = list(node.inputs) + [None] * (7 - len(node.inputs))
    q, k, v, mask, past_k, past_v, nonpad = ins[:7]
    if past_k is not None or past_v is not None:
        return "ONNX Attention with a past key/value (KV cache inputs) is not fused"
    if nonpad is not None:
        return "ONNX Attention with nonpad_kv_seqlen is not fused"
    for o in node.outputs[1:]:
        if o.users or graph.is_output(o):
            return f"ONNX Attention output {o.name!r} (present key/value or qk scores) is used"
    if float(node.attrs.get("softcap", 0.0) or 0.0) != 0.0:
        return "ONNX Attention with softcap is not eet.Attention"
    terms = [] if mask is None else [_mask.Term("auto", mask)]
    heads = None
    if node.attrs.get("q_num_heads"):
        heads = (int(node.attrs["q_num_heads"]), int(node.attrs.get("kv_num_heads") or node.attrs["q_num_heads"]))
    scale = node.attrs.get("scale")
    return Site(node, q, k, v, node.outputs[0], [node], False, 1.0,
                None if scale is None else float(scale), terms, bool(node.attrs.get("is_causal", 0)), heads)


# --- verifying it ---------------------------------------------------------------------------------------

def _heads(site: Site, qc, kc, vc, aq, ak, av, cq, ck, cv) -> tuple[int, int, int] | str:
    """(query heads, key/value heads, head dim) from the code-traced operands, or why they are not head
    splits of their sources as eet.Attention reads them (q head h uses kv head h // (H / Hkv))."""
    Nq, Nk, Nv = cq.shape[-1], ck.shape[-1], cv.shape[-1]
    if site.anchor.op_type == "Attention" and aq.ndim == 3:
        # ONNX Attention on [B, S, H*D] operands: they must be the projections themselves
        if site.heads_3d is None:
            return "3-D ONNX Attention without q_num_heads"
        H, Hkv = site.heads_3d
        if not (np.array_equal(aq, cq) and np.array_equal(ak, ck) and np.array_equal(av, cv)):
            return "3-D q/k/v are not plain [B, S, H*D] projections"
        if Nq % H or Nk % Hkv or Nk != Nv or Nq // H != Nk // Hkv:
            return f"q/k/v widths {Nq}/{Nk}/{Nv} do not split into {H}/{Hkv} heads of one size"
        return H, Hkv, Nq // H
    mq = _layout.match_heads(aq, cq, "BHSD")
    if mq is None:
        return (f"q {site.q.name!r} is not the [B, H, S, D] head split of {qc.source.name!r} "
                f"(shape {list(aq.shape)} at the probe)")
    H, D, _ = mq
    if Nk % D or Nv != Nk:
        return f"k/v widths {Nk}/{Nv} are not the same multiple of the head dim {D}"
    Hkv = Nk // D
    if H % Hkv:
        return f"{H} query heads are not a multiple of {Hkv} key/value heads"
    reps = (1, H // Hkv) if H != Hkv else (1,)
    mk = _layout.match_heads(ak, ck, "BHDS" if site.k_transposed else "BHSD", reps)
    if mk is None:
        return (f"k {site.k.name!r} is not the {'transposed ' if site.k_transposed else ''}head split "
                f"of {kc.source.name!r} (shape {list(ak.shape)} at the probe)")
    mv = _layout.match_heads(av, cv, "BHSD", reps)
    if mv is None:
        return f"v {site.v.name!r} is not the head split of {vc.source.name!r} (shape {list(av.shape)})"
    if mk[1] != D or mv[1] != D:
        return f"head dims differ: q {D}, k {mk[1]}, v {mv[1]}"
    for name, arr, (hs, _, rep) in (("k", ak, mk), ("v", av, mv)):
        heads = hs * rep
        # MatMul broadcasting takes H heads or 1 (MQA); the ONNX op also takes Hkv (native GQA)
        ok = heads in (H, 1) or (site.anchor.op_type == "Attention" and heads == Hkv)
        if not ok or (arr.ndim == 3) != (aq.ndim == 3):
            return f"{name} has {heads} heads for {H} query heads"
    return H, Hkv, D


def _merge_point(graph: Graph, site: Site, child, want: np.ndarray):
    """The first value below the attention output that is `want` ([B, S, H*D] or [B*S, H*D]), with its rank
    and the view nodes on the way, or a reason."""
    down = _layout.walk_down(graph, site.out)
    for i in range(len(down) + 1):
        val = site.out if i == 0 else down[i - 1].outputs[0]
        rank = _layout.is_merged(child.value(val), want)
        if rank:
            return val, rank, down[:i]
    return f"the attention output {site.out.name!r} is not merged back to [B, S, H*D] by views"


def _plan(graph: Graph, site: Site) -> tuple[Plan, list[Node], Node] | str:
    """Probe the layouts and the mask. Returns (plan, covered nodes, node producing the merged value)."""
    qc, kc, vc = _layout.walk_up(site.q), _layout.walk_up(site.k), _layout.walk_up(site.v)
    if len({id(c.source) for c in (qc, kc, vc)}) != 3:
        return "q, k and v are views of the same value"
    if vc.factor != 1.0:
        return f"v is scaled by {vc.factor:g}"
    probe = base_probe(graph, LAYOUT_CONFIG)
    B, S = probe.cfg.B, probe.cfg.S
    try:
        srcs = {qc.source: _layout.source_codes(probe, qc.source, "q"),
                kc.source: _layout.source_codes(probe, kc.source, "k"),
                vc.source: _layout.source_codes(probe, vc.source, "v")}
        ident = qc.identity | kc.identity | vc.identity
        child = probe.child(srcs, ident)
        aq = child.value(site.q)
        found = _heads(site, qc, kc, vc, aq, child.value(site.k), child.value(site.v),
                       srcs[qc.source], srcs[kc.source], srcs[vc.source])
        if isinstance(found, str):
            return found
        H, Hkv, D = found
        three_d = site.anchor.op_type == "Attention" and aq.ndim == 3
        heads_4d = aq.ndim == 4
        out_shape = (B, S, H * D) if three_d else (B, H, S, D) if heads_4d else (B * H, S, D)
        co = _layout.codes(out_shape)
        want = co if three_d else _layout.merged_view(co.reshape(B, H, S, D))
        merge = _merge_point(graph, site, probe.child({**srcs, site.out: co}, ident), want)
        if isinstance(merge, str):
            return merge
        merged, rank, out_nodes = merge
    except ProbeError as e:
        return str(e)

    if site.softmax_axis not in (-1, 3 if heads_4d else 2):
        return f"Softmax over axis {site.softmax_axis}, not the last one"
    if site.anchor.op_type == "Attention":
        scale = 1.0 / math.sqrt(D) if site.scale_attr is None else site.scale_attr
    else:
        scale = site.factor
    scale *= qc.factor * kc.factor

    mask = _mask.analyse(graph, site.terms, site.causal_attr, heads_split=heads_4d or three_d)
    if isinstance(mask, str):
        return mask

    covered = site.covered + [n for n in out_nodes if n not in site.covered]
    covered += _layout.plumbing_closure(graph, covered)
    plan = Plan(qc.source, kc.source, vc.source, merged, rank, H, Hkv, D, float(scale), mask)
    return plan, covered, merged.producer


def _matcher(find_site):
    def pattern(graph: Graph, node: Node):
        site = find_site(graph, node)
        if site is None or isinstance(site, str):
            return site
        found = _plan(graph, site)
        if isinstance(found, str):
            return found
        plan, covered, merge_node = found
        # the anchor (Softmax) counts as covered; the node whose output the fused op takes over may be read
        why = outside_consumer(graph, Match(covered=list(covered)), merge_node)
        if why:
            return why
        m = AttentionMatch()
        m.covered = list(covered)
        m.nodes = {"root": node, "merge": merge_node}
        m.plan = plan
        return m
    return pattern


def check(graph: Graph, m: Match) -> str | None:
    return None  # everything is verified while matching (the probes need the whole site)


# --- rewriting -------------------------------------------------------------------------------------------

def shared_pad_info(graph: Graph, mask_input: Value) -> tuple[Value, bool]:
    """The graph's one eet.PadInfo of `mask_input` (made on first use). Returns (ranges, made_now)."""
    for n in graph.nodes:
        if n.domain == "eet" and n.op_type == "PadInfo" and n.inputs[0] is mask_input:
            return n.outputs[0], False
    B = mask_input.shape[0] if mask_input.shape else None
    ranges = graph.value("pad_ranges", np.int64, (B, 2))
    graph.add_node("PadInfo", [mask_input], [ranges], domain="eet", name=graph.fresh_name("PadInfo"),
                   before=graph.nodes[0] if graph.nodes else None)
    return ranges, True


def rewrite(graph: Graph, m: Match):
    """eet.Attention on the projections (+ a Reshape when the merged value was [B*S, E]); reports the
    PadInfo it made, if any, so the fusion counts show it once."""
    plan: Plan = m.plan
    root = m["root"]
    extra = {}
    ranges = None
    if plan.mask.mask_input is not None:
        ranges, made = shared_pad_info(graph, plan.mask.mask_input)
        if made:
            extra["PadInfo"] = 1
    attrs = {"num_heads": plan.num_heads, "kv_num_heads": plan.kv_num_heads, "head_dim": plan.head_dim,
             "scale": plan.scale, "causal": int(plan.mask.causal)}
    E = plan.num_heads * plan.head_dim
    qshape = plan.q.shape if plan.q.shape is not None and len(plan.q.shape) == 3 else (None, None, None)
    old = plan.merged
    y = graph.value("attention_out", old.dtype or plan.q.dtype, (qshape[0], qshape[1], E))
    inputs = [plan.q, plan.k, plan.v] + ([ranges] if ranges is not None else [])
    graph.add_node("Attention", inputs, [y], attrs, domain="eet", name=graph.fresh_name("Attention"), before=root)
    new = y
    if plan.merged_rank == 2:
        target = graph.constant(np.array([-1, E], np.int64), "attention_merge_shape")
        new = graph.value("attention_out_2d", old.dtype, old.shape)
        graph.add_node("Reshape", [y, target], [new], before=root)
    graph.replace_all_uses(old, new)
    if graph.is_output(new):
        _take_name(graph, old, new)
    return extra or None


RULES = [
    Rule("Attention/softmax", "Attention", _matcher(_softmax_site), check, rewrite, root_ops=("Softmax",),
         template=TEMPLATE, allow_shared=("merge",)),
    Rule("Attention/onnx", "Attention", _matcher(_onnx_site), check, rewrite, root_ops=("Attention",),
         template=TEMPLATE, allow_shared=("merge",)),
]
