"""Rewrite: the fusion pass (`fuse`). Rules live one per file in `rules/`, ordered in `rules.RULES`.

`fuse(graph)` runs every rule, most specific first, to a fixed point, and returns a FusionReport.
`EETJIT_TRACE_RULES=1` prints every near miss (a structural match whose check failed) as it happens;
`EETJIT_DUMP_GRAPHS=1` prints the graph after fusion.
"""
from __future__ import annotations

import os
import sys

from eetjit.ir import Graph
from eetjit.rewrite.pattern import Match, Pat
from eetjit.rewrite.report import FusionReport, NearMiss
from eetjit.rewrite.rule import Rule, outside_consumer


def _try(rule: Rule, graph: Graph, node) -> tuple[Match | None, str | None]:
    """The first match of `rule` rooted at `node` that passes, or (None, the last reason it failed)."""
    reason = None
    if isinstance(rule.pattern, Pat):
        candidates = []
        for v in node.outputs:
            candidates.extend(rule.pattern.match(v, Match()))
    else:
        found = rule.pattern(graph, node)
        if isinstance(found, str) or found is None:
            return None, found
        candidates = [found]
    for m in candidates:
        reason = outside_consumer(graph, m, node, {id(n) for k, n in m.nodes.items() if k in rule.allow_shared})
        if reason is None:
            reason = rule.check(graph, m)
        if reason is None:
            return m, None
    return None, reason


def fuse(graph: Graph, rules: list[Rule] | None = None) -> FusionReport:
    """Fuse `graph` in place; returns the FusionReport (counts, unfused histogram, near misses)."""
    from eetjit.rewrite.rules import RULES
    rules = RULES if rules is None else rules
    trace = bool(os.environ.get("EETJIT_TRACE_RULES"))
    report = FusionReport()
    misses: dict[tuple[str, str], NearMiss] = {}
    changed = True
    while changed:
        changed = False
        for rule in rules:
            fired = False       # the graph is cleaned and sorted again only after a rule that rewrote it
            roots = rule.roots()
            for node in list(graph.nodes):
                if node.op_type not in roots or node not in graph.nodes:
                    continue
                m, reason = _try(rule, graph, node)
                if m is None:
                    if reason:
                        nm = NearMiss(rule.name, node.name, node.op_type, reason)
                        if trace and (rule.name, node.name) not in misses:
                            print(f"[eetjit] near miss: {rule.name} at {node.name}: {reason}", file=sys.stderr)
                        misses[(rule.name, node.name)] = nm
                    continue
                extra = rule.rewrite(graph, m)
                misses.pop((rule.name, node.name), None)
                report.add(rule.fused_op)
                if isinstance(extra, dict):  # helper ops a rewrite emitted once (e.g. the shared PadInfo)
                    for op, n in extra.items():
                        report.add(op, n)
                changed = fired = True
            if fired:
                graph.remove_dead()
                graph.toposort()
    # Counts are what the fused graph holds: a fused op that a later rule absorbed (a LayerNorm inside an
    # AddLayerNorm or the BERT Embedding) is no longer there to run.
    report.counts = {op[len("eet."):]: n for op, n in graph.op_histogram().items() if op.startswith("eet.")}
    report.near_misses = [nm for nm in misses.values() if any(n.name == nm.node for n in graph.nodes)]
    report.unfused = graph.op_histogram()
    for k in [k for k in report.unfused if k.startswith("eet.")]:
        del report.unfused[k]
    from eetjit.plan.structure import recognize
    report.structure = recognize(graph)
    if os.environ.get("EETJIT_DUMP_GRAPHS"):
        print(f"--- after fusion ---\n{graph}", file=sys.stderr)
    return report


__all__ = ["fuse", "FusionReport", "NearMiss", "Rule"]
