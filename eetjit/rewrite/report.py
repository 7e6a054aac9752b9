"""FusionReport: what the rewrite pass did and did not fuse, and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class NearMiss:
    rule: str
    node: str
    op_type: str
    reason: str

    def to_dict(self):
        return {"rule": self.rule, "node": self.node, "op_type": self.op_type, "reason": self.reason}


@dataclass
class FusionReport:
    counts: dict[str, int] = field(default_factory=dict)       # fused op -> how many emitted
    unfused: dict[str, int] = field(default_factory=dict)      # ONNX op -> how many left as plain ops
    near_misses: list[NearMiss] = field(default_factory=list)
    structure: dict | None = None                              # model structure, when recognized

    def add(self, op: str, n: int = 1) -> None:
        self.counts[op] = self.counts.get(op, 0) + n

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "unfused": dict(self.unfused),
                "near_misses": [nm.to_dict() for nm in self.near_misses], "structure": self.structure}

    def summary(self) -> str:
        lines = ["fused ops"]
        lines += [f"  {n:5d}  eet.{op}" for op, n in sorted(self.counts.items())] or ["  (none)"]
        lines.append("left as plain ops")
        lines += [f"  {n:5d}  {op}" for op, n in Counter(self.unfused).most_common()] or ["  (none)"]
        if self.near_misses:
            lines.append("near misses")
            lines += [f"  {nm.rule} at {nm.node} ({nm.op_type}): {nm.reason}" for nm in self.near_misses]
        return "\n".join(lines)
