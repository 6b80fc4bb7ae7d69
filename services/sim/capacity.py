"""The largest arrival rate a configuration serves within a latency objective.

A rate the pipeline cannot keep up with fills its queues, and its latency grows with the length
of the run; a rate it can keep up with has a latency that settles. So the answer is found by
bisection on Poisson arrivals between nothing and the configuration's saturated throughput
(measured with a closed loop that keeps every worker busy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from npusim.services.errors import ConfigError
from npusim.services.sim.arrivals import closed, poisson
from npusim.services.sim.engine import Scenario, simulate
from npusim.services.sim.report import summarize

__all__ = ["Slo", "parse_slo", "capacity"]

_SLO = re.compile(r"^\s*(p50|p90|p95|p99|p99\.9|mean)\s*(<=|<)\s*([0-9.]+)\s*(us|µs|ms|s)\s*$")
_UNIT = {"us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}


@dataclass(frozen=True)
class Slo:
    """A latency objective such as ``p99<5ms``."""

    statistic: str  # "p99", "mean", ...
    limit_ns: float

    def met(self, result: dict[str, Any]) -> bool:
        key = "mean_us" if self.statistic == "mean" else f"{self.statistic}_us"
        return result["latency"][key] * 1e3 <= self.limit_ns

    def __str__(self) -> str:
        return f"{self.statistic} ≤ {self.limit_ns / 1e6:g} ms"


def parse_slo(text: str) -> Slo:
    m = _SLO.match(text)
    if not m:
        raise ConfigError(f"--slo {text!r}: write a latency statistic, < and a time, e.g. 'p99<5ms', 'p50<800us' "
                          "or 'mean<2ms' (statistics: p50, p90, p95, p99, p99.9, mean)")
    return Slo(m.group(1), float(m.group(3)) * _UNIT[m.group(4)])


def capacity(scenario: Scenario, slo: Slo, *, seed: int = 0, steps: int = 12,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The largest Poisson rate (requests/s) that meets ``slo`` for the scenario's (single)
    session, with its result there; ``rate_per_s`` is 0 when even a trickle misses it."""
    (session,) = scenario.sessions
    full = replace(session, arrivals=closed(max(2 * session.workers, 2 * len(session.pes))))
    ceiling = summarize(simulate(replace(scenario, sessions=(full,))))[0]["qps"]

    def at(rate: float) -> dict[str, Any]:
        s = replace(session, arrivals=poisson(rate, seed))
        return summarize(simulate(replace(scenario, sessions=(s,))))[0]

    hi = ceiling
    floor = at(ceiling * 0.01)
    if not slo.met(floor):
        return {"slo": str(slo), "rate_per_s": 0.0, "saturated_per_s": ceiling, "result": floor}
    lo, best = ceiling * 0.01, floor
    for _ in range(steps):
        mid = (lo + hi) / 2
        if progress is not None:
            progress(f"capacity: trying {mid:,.0f}/s")
        r = at(mid)
        if slo.met(r):
            lo, best = mid, r
        else:
            hi = mid
    return {"slo": str(slo), "rate_per_s": lo, "saturated_per_s": ceiling, "result": best}
