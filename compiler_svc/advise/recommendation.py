"""One check's answer: a change worth making, or why there is none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recommendation", "Skip", "gain"]


def gain(before: dict[str, float], after: dict[str, float], target: str) -> float:
    """The change's gain on the target, as a fraction: 0.25 is 25% lower latency (1.33× faster)
    or 25% more throughput."""
    if target == "latency":
        return 1 - after["latency_us"] / before["latency_us"] if before["latency_us"] else 0.0
    return after["throughput_per_s"] / before["throughput_per_s"] - 1 if before["throughput_per_s"] else 0.0


@dataclass
class Recommendation:
    knob: str
    change: str
    code: str
    why: str
    before: dict[str, Any]
    after: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    cli: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # a check's own table (e.g. a sweep)

    def to_json(self, target: str) -> dict[str, Any]:
        return {"knob": self.knob, "change": self.change, "code": self.code, "cli": self.cli, "why": self.why,
                "predicted": {"latency_us": self.after["latency_us"], "throughput_per_s": self.after["throughput_per_s"],
                              "before": self.before, "after": self.after,
                              "gain_pct": round(100 * gain(self.before, self.after, target), 2)},
                "measured": self.measured, "accuracy": self.accuracy, "details": self.details}


@dataclass
class Skip:
    knob: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "reason": self.reason, "details": self.details}
