"""``npusim top``: a live per-PE view of every running device daemon.

A daemon only keeps cumulative counters (cycles at its clock, see
``DaemonService.counters``); a rate needs two reads. So ``top`` asks each daemon for STATS
twice, an interval apart, and turns the differences into the numbers a person watches:
how busy each PE was (utilisation), how much of that its tensor array computed (compute),
how much DMA ran (IO), queue depth, jobs per second and who owns the PE. The arithmetic is
:func:`pe_rates`, a pure function, so it is tested without a daemon.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.config import run_dir as resolve_run_dir
from services.discovery import records
from services.errors import ConfigError, NpusimError
from services.protocol import Kind
from services.rpc import Peer

__all__ = ["PeRates", "Sample", "pe_rates", "device_rates", "sample", "sample_all", "top"]

FORMATS = ("table", "json")
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


def sample_all(rdir: Path) -> dict[str, Sample]:
    """Counters of every daemon registered in ``rdir``, by device name."""
    return {r.name: sample(r.name, r.endpoint) for r in records(rdir) if r.kind == "daemon"}


def _rates(prev: Mapping[str, Sample], cur: Mapping[str, Sample]) -> dict[str, dict[str, PeRates] | str]:
    """Per device: its PE rates, or why there are none."""
    out: dict[str, dict[str, PeRates] | str] = {}
    for name, s in cur.items():
        p = prev.get(name)
        if s.counters is None:
            out[name] = s.error or "not answering"
        elif p is None or p.counters is None:
            out[name] = "waiting for a second sample"
        else:
            out[name] = device_rates(p.counters, s.counters, s.t - p.t)
    return out


def _as_json(rates: Mapping[str, dict[str, PeRates] | str]) -> dict[str, Any]:
    return {dev: {pe: asdict(r) for pe, r in pes.items()} for dev, pes in rates.items() if isinstance(pes, dict)}


def _table(rates: Mapping[str, dict[str, PeRates] | str], cur: Mapping[str, Sample], title: str) -> Table:
    table = Table(title=Text(title))  # Text: paths and names are shown as they are, never as markup
    for col in ("device", "PE", "util%", "comp%", "IO%", "queue", "jobs/s", "jobs"):
        table.add_column(col, justify="left" if col in ("device", "PE") else "right", no_wrap=True)
    table.add_column("session (PE)", overflow="fold")
    host_bound = []
    for dev, pes in rates.items():
        if not isinstance(pes, dict):
            table.add_row(dev, "", "", "", "", "", "", "", Text(pes))
            continue
        host_bound.append(f"{dev} {(cur[dev].counters or {}).get('host_bound', 0)}")
        for i, (pe, r) in enumerate(pes.items()):
            owner = f"{r.session} ({r.session_pe})" if r.session else "-"
            table.add_row(dev if i == 0 else "", pe, f"{r.utilization_pct:.1f}", f"{r.compute_pct:.1f}",
                          f"{r.io_pct:.1f}", str(r.queue), f"{r.jobs_per_s:.1f}", str(r.jobs), Text(owner))
    if host_bound:
        table.caption = Text("host-bound jobs (the host computed slower than the emulated chip): " + ", ".join(host_bound))
    return table


def top(*, run_dir: Path | None, once: bool, interval: float | None, fmt: str) -> int:
    """Run ``npusim top``; returns the exit code (1 when no daemon is running or answering)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: give one of {', '.join(FORMATS)}")
    if interval is None:
        interval = 0.5 if once else 1.0
    if not interval > 0:
        raise ConfigError(f"--interval {interval:g}: give a positive number of seconds")
    rdir = resolve_run_dir(run_dir)
    first = sample_all(rdir)
    if not first:
        _err(f"no npusim device daemon is running in {rdir}; start one with `npusim up` (or `npusim daemon`), "
                  "or point --run-dir / NPUSIM_RUN_DIR at the stack's run directory")
        return 1
    if once:
        return _once(rdir, first, interval, fmt)
    return _live(rdir, first, interval, fmt)


def _err(text: str) -> None:
    """Plain stderr: no markup to misread in paths, no wrapping to split a command."""
    print(text, file=sys.stderr)


def _once(rdir: Path, first: dict[str, Sample], interval: float, fmt: str) -> int:
    time.sleep(interval)
    second = sample_all(rdir)
    rates = _rates(first, second)
    for dev, why in rates.items():
        if not isinstance(why, dict):
            _err(f"npusim top: {dev}: {why}")
    if not any(isinstance(v, dict) for v in rates.values()):
        _err(f"no device daemon in {rdir} answered; check `npusim status`")
        return 1
    if fmt == "json":
        print(json.dumps(_as_json(rates)))
    else:
        Console().print(_table(rates, second, f"npusim top — {interval:g} s sample, run dir {rdir}"))
    return 0


def _live(rdir: Path, prev: dict[str, Sample], interval: float, fmt: str) -> int:
    """Refresh until Ctrl-C; ``--format json`` prints one JSON object per line instead."""
    try:
        if fmt == "json":
            while True:
                time.sleep(interval)
                cur = sample_all(rdir)
                print(json.dumps(_as_json(_rates(prev, cur))), flush=True)
                prev = cur
        title = f"npusim top — every {interval:g} s, run dir {rdir} — Ctrl-C to quit"
        with Live(_table(_rates({}, prev), prev, title), refresh_per_second=4, transient=False) as live:
            while True:
                time.sleep(interval)
                cur = sample_all(rdir)
                live.update(_table(_rates(prev, cur), cur, title))
                prev = cur
    except KeyboardInterrupt:
        return 0
