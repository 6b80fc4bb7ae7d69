"""Per-PE rates from a daemon's cumulative counters, and reading those counters.

A daemon only keeps cumulative counters (cycles at its clock, see
``DaemonService.counters``); a rate needs two reads. :func:`pe_rates` turns two reads into
what a person watches: how busy each PE was (utilisation), how much of that its tensor array
computed (compute), how much DMA ran (IO), queue depth, jobs per second and who owns the PE.
``npusim top``, the daemon's Prometheus exporter and ``npusim bench`` share it; it is a pure
function, tested without a daemon.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from npusim.services.errors import NpusimError
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer

__all__ = ["PROBE_TIMEOUT_S", "PeRates", "Sample", "device_rates", "pe_rates", "sample"]

PROBE_TIMEOUT_S = 1.0
"""How long one daemon may take to answer STATS before it is shown as not answering."""


@dataclass(frozen=True)
class PeRates:
    """What one PE did between two counter reads (percentages are 0-100)."""

    utilization_pct: float  # Δtask_cycles / Δcycles: the PE held a job
    compute_pct: float  # Δtensor_cycles / Δtask_cycles: of that, the array computed
    io_pct: float  # Δio_cycles / Δcycles: DMA to or from this PE
    queue: int  # outstanding jobs of the owning session, now
    jobs_per_s: float  # Δjobs / Δt
    jobs: int  # cumulative jobs since the daemon started
    session: str | None  # the session owning the PE, now
    session_pe: str | None  # the PE name that session opened: pe0, pe1 or pe0-1


def _pct(num: int, den: int) -> float:
    """A ratio in percent, 0 for an empty interval, clamped to 0-100.

    Clamped because a job's cycles are booked when it finishes: a job that started before
    the interval but finished inside it can book more cycles than the interval had.
    """
    if den <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * num / den)), 2)


def pe_rates(prev: Mapping[str, Any], cur: Mapping[str, Any], dt_s: float) -> PeRates:
    """Rates of one PE from two reads of its counters taken ``dt_s`` seconds apart.

    A counter that went backwards means the daemon restarted between the reads; the rates
    are then taken from zero (since its start) rather than reported negative.
    """
    if int(cur.get("cycles", 0)) < int(prev.get("cycles", 0)):
        prev = {}

    def delta(key: str) -> int:
        return max(0, int(cur.get(key, 0)) - int(prev.get(key, 0)))

    cycles, task = delta("cycles"), delta("task_cycles")
    jobs_per_s = delta("jobs") / dt_s if dt_s > 0 else 0.0
    return PeRates(
        utilization_pct=_pct(task, cycles),
        compute_pct=_pct(delta("tensor_cycles"), task),
        io_pct=_pct(delta("io_cycles"), cycles),
        queue=int(cur.get("queue", 0)),
        jobs_per_s=round(jobs_per_s, 1),
        jobs=int(cur.get("jobs", 0)),
        session=cur.get("session"),
        session_pe=cur.get("pe"),
    )


def _pes(counters: Mapping[str, Any]) -> Iterator[str]:
    """The PE entries of a counters reply (it also carries device-wide fields like host_bound)."""
    return (k for k in sorted(counters) if k.startswith("pe") and isinstance(counters[k], Mapping))


def device_rates(prev: Mapping[str, Any], cur: Mapping[str, Any], dt_s: float) -> dict[str, PeRates]:
    """:func:`pe_rates` for every PE of one device."""
    return {pe: pe_rates(prev.get(pe, {}), cur[pe], dt_s) for pe in _pes(cur)}


@dataclass(frozen=True)
class Sample:
    """One daemon's counters, and when (monotonic seconds, the midpoint of the request)."""

    device: str
    t: float
    counters: dict[str, Any] | None  # None: the daemon did not answer
    error: str | None = None


def sample(name: str, endpoint: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> Sample:
    t0 = time.monotonic()
    peer = Peer(endpoint, name=name, timeout_s=timeout_s)
    try:
        stats = peer.request(Kind.STATS).body["stats"]
        t = (t0 + time.monotonic()) / 2
    except NpusimError as e:
        return Sample(name, t0, None, str(e))
    finally:
        peer.close(linger_ms=0)
    counters = stats.get("counters")
    if not isinstance(counters, dict):
        return Sample(name, t, None, "its STATS reply has no PE counters (an older npusim daemon?)")
    return Sample(name, t, counters)
