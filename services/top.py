"""``npusim top``: a live per-PE view of every running device daemon.

``top`` asks each daemon for STATS twice, an interval apart, and shows the rates
:mod:`npusim.services.rates` makes of the differences.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from npusim.services.config import run_dir as resolve_run_dir
from npusim.services.discovery import records
from npusim.services.errors import ConfigError
from npusim.services.rates import PeRates, Sample, device_rates, sample

__all__ = ["sample_all", "top"]

FORMATS = ("table", "json")


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
