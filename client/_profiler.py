"""The profiler: ``with profile(file=f) as profiler:`` and ``with profiler.record("pre"):``.

It is built on the OpenTelemetry spans every process already makes. While a profiler is
active, each request asks its worker and its device to capture the spans they make for it
and send them back with the result; the profiler merges them with the client's own spans
(one track per process, one thread per PE) into a Chrome/Perfetto trace file and into
tables. The same spans go to Jaeger when OTLP is configured.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan

from services import tracing
from services.chrome_trace import category, write_chrome_trace

__all__ = ["Profiler", "profile", "collecting", "deliver"]

_active: list[Profiler] = []


def collecting() -> bool:
    """Whether requests should bring their remote spans back (a profiler is active)."""
    return bool(_active)


def deliver(records: list[dict[str, Any]]) -> None:
    """Hand span records that came back with a reply to every active profiler."""
    for p in _active:
        p._remote.extend(records)


class Profiler:
    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file
        self._local: list[ReadableSpan] = []
        self._remote: list[dict[str, Any]] = []

    def __enter__(self) -> Profiler:
        tracing.setup_tracing("client", instance="client")
        tracing.add_sink(self._local)
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        tracing.remove_sink(self._local)
        if self in _active:
            _active.remove(self)
        if self.file is not None:
            write_chrome_trace(self.records(), self.file)
            self.file.flush()

    @contextlib.contextmanager
    def record(self, name: str) -> Iterator[None]:
        """A user span around any block of code; requests inside become its children."""
        with tracing.tracer().start_as_current_span(name, attributes={"user": True}):
            yield

    def records(self) -> list[dict[str, Any]]:
        return [tracing.to_record(s) for s in self._local] + list(self._remote)

    def export_chrome_trace(self, filename: str) -> None:
        with open(filename, "w") as f:
            write_chrome_trace(self.records(), f)

    def operator_table(self) -> list[dict[str, Any]]:
        """Count and time of every CPU operator, NPU stage and request, by name (µs)."""
        by_name: dict[str, list[float]] = {}
        for r in self.records():
            by_name.setdefault(r["name"], []).append((r["end"] - r["start"]) / 1000.0)
        order = {"CPU": 0, "NPU": 1, "Runtime": 2}
        rows = []
        for name, durs in by_name.items():
            durs.sort()
            rows.append({
                "name": name, "where": category(name), "count": len(durs), "mean_us": statistics.fmean(durs),
                "p50_us": durs[len(durs) // 2], "p99_us": durs[min(len(durs) - 1, int(len(durs) * 0.99))],
            })
        return sorted(rows, key=lambda r: (order.get(r["where"], 3), -r["mean_us"]))


def profile(file: IO[str] | None = None) -> Profiler:
    """Profile everything inside the ``with`` block; write a Chrome trace to ``file`` at exit."""
    return Profiler(file)
