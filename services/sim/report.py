"""A simulation's figures under the names and units ``npusim bench`` uses.

Throughput counts the measured requests over the span from the end of the warm-up to the last
answer. Utilisations are busy time over that span: a PE executing, a PCIe direction moving
bytes, a host core running a host phase, a worker holding a request (host work and the wait for
its NPU jobs). What bounds a configuration is the busiest of them when one is nearly saturated
(the NPU, PCIe, the host CPU, the caller handling answers, or the workers: too few for the
CPU/NPU balance); otherwise it is
the load: too few requests in flight for a closed loop, the offered rate for an open one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npusim.services.latency import latency_stats
from npusim.services.sim.engine import Run, SessionRun, busy_fraction

__all__ = ["SATURATED", "summarize", "combined", "percentile_us"]

SATURATED = 0.9
BOUNDS = ("npu", "pcie", "cpu", "caller", "workers")
"""A resource busier than this share of the time is what bounds the configuration."""


def summarize(run: Run) -> list[dict[str, Any]]:
    """One result per session."""
    return [_session(run, k, r) for k, r in enumerate(run.sessions)]


def _session(run: Run, k: int, r: SessionRun) -> dict[str, Any]:
    a = r.arrays()
    n = len(a["end"])
    if n == 0:
        raise ValueError("no request finished")
    spec = r.spec
    lo = int(r.end[r.measured_from - 1]) if r.measured_from > 0 else int(min(a["arrival"]))
    hi = int(a["end"].max())
    span = max(hi - lo, 1)
    qps = n / (span / 1e9)
    pes = sorted({(d, c) for d, pe in spec.pes for c in _cores(pe)})
    pe_util = {f"npu{d}pe{c}": 100 * busy_fraction(run.pe_busy[(d, c)], lo, hi) for d, c in pes}
    devices = sorted({d for d, _ in spec.pes})
    link = max((busy_fraction(run.link_busy[(d, x)], lo, hi) for d in devices for x in ("h2d", "d2h")),
               default=0.0)
    cpu = busy_fraction(run.core_busy, lo, hi) / run.host_cores
    workers = busy_fraction(run.worker_busy[k], lo, hi) / spec.workers
    npu = max(pe_util.values(), default=0.0) / 100
    caller = min(1.0, n * spec.consumer_ns / span)  # the caller's thread handling answers
    shares = {"npu": npu, "pcie": link, "cpu": cpu, "caller": caller, "workers": workers}
    # in this order: workers waiting on a saturated NPU (or on a caller that cannot keep up) are
    # busy because of it, not short
    bound = next((x for x in BOUNDS if shares[x] >= SATURATED),
                 "concurrency" if spec.arrivals.closed else "load")
    latency = a["end"] - a["arrival"]
    wait = a["start"] - a["arrival"]
    p = spec.pipeline
    return {
        "queries": n, "qps": qps, "samples_per_s": qps * p.batch,
        "latency": latency_stats(latency),
        "queue_wait": latency_stats(wait),
        "npu_utilization_pct": pe_util,
        "pcie_utilization_pct": 100 * link,
        "host_cpu_utilization_pct": 100 * cpu,
        "worker_utilization_pct": 100 * workers,
        "per_query": {"npu_exec_us": p.npu_ns / 1e3, "device_us": float(a["device"].mean()) / 1e3,
                      "cpu_us": p.host_ns / 1e3},
        "bound_by": bound,
        "simulated_s": span / 1e9,
    }


def combined(run: Run) -> dict[str, Any]:
    """Several sessions as one figure set (what the clients see together): throughput summed,
    latencies and queue waits over every measured request, each session's PEs, what bounds the
    busiest; ``sessions`` holds each session's own summary. One session: its summary."""
    each = summarize(run)
    if len(each) == 1:
        return each[0]
    arrays = [r.arrays() for r in run.sessions]
    latency = np.concatenate([a["end"] - a["arrival"] for a in arrays])
    wait = np.concatenate([a["start"] - a["arrival"] for a in arrays])
    n = sum(e["queries"] for e in each)
    workers = sum(r.spec.workers for r in run.sessions)
    bound = next((b for b in BOUNDS if any(e["bound_by"] == b for e in each)), each[0]["bound_by"])
    return {
        "queries": n, "qps": sum(e["qps"] for e in each), "samples_per_s": sum(e["samples_per_s"] for e in each),
        "latency": latency_stats(latency), "queue_wait": latency_stats(wait),
        "npu_utilization_pct": {k: v for e in each for k, v in e["npu_utilization_pct"].items()},
        "pcie_utilization_pct": max(e["pcie_utilization_pct"] for e in each),
        "host_cpu_utilization_pct": each[0]["host_cpu_utilization_pct"],
        "worker_utilization_pct": sum(e["worker_utilization_pct"] * r.spec.workers
                                      for e, r in zip(each, run.sessions)) / workers,
        "per_query": {k: sum(e["per_query"][k] * e["queries"] for e in each) / n for k in each[0]["per_query"]},
        "bound_by": bound, "simulated_s": max(e["simulated_s"] for e in each),
        "sessions": each,
    }


def _cores(pe: str) -> tuple[int, ...]:
    return (0, 1) if pe == "pe0-1" else (int(pe[2]),)


def percentile_us(result: dict[str, Any], which: str) -> float:
    """``p99`` → the result's p99 latency in µs (``mean`` too)."""
    key = "mean_us" if which == "mean" else f"{which}_us"
    return float(result["latency"][key])
