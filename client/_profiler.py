"""The profiler: ``with profile(file=f) as profiler:`` and ``with profiler.record("pre"):``.

It is built on the OpenTelemetry spans every process already makes. While a profiler is
active, each request asks its worker and its device to capture the spans they make for it
and send them back with the result; the profiler merges them with the client's own spans
(one track per process, one thread per PE) into a Chrome/Perfetto trace file or a CSV, and
into the SDK's tables (``print_summary``, ``print_npu_executions``, ...; see
:mod:`npusim.client._profiler_tables`). The same spans go to Jaeger when OTLP is configured.

``NPUSIM_PROFILER_OUTPUT_PATH=/path/trace.json`` profiles a program without changing it:
sessions call :func:`session_profiler`, which shares one profiler per output path and
process between all sessions; it writes the file when the last of them closes and again at
interpreter exit if a session is still open. ``{pid}`` in the path becomes the process id,
so several processes can profile side by side.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan

from npusim.client import _profiler_print as show
from npusim.client import _profiler_tables as tables
from npusim.services import tracing
from npusim.services.chrome_trace import write_chrome_trace
from npusim.services.errors import ConfigError

__all__ = [
    "ENV_OUTPUT_PATH",
    "Profiler",
    "RecordFormat",
    "Resource",
    "collecting",
    "deliver",
    "profile",
    "session_profiler",
]

log = logging.getLogger("npusim.profiler")

ENV_OUTPUT_PATH = "NPUSIM_PROFILER_OUTPUT_PATH"

_active: list[Profiler] = []


class Resource(enum.Enum):
    """What to record: everything, the host side (``cat == "Runtime"``) or the device (``"NPU"``)."""

    All = "all"
    Cpu = "cpu"
    Npu = "npu"


class RecordFormat(enum.Enum):
    """What to write to ``file`` at exit: a Chrome/Perfetto trace (JSON) or the DataFrame as CSV."""

    ChromeTrace = "chrome_trace"
    PandasDataFrame = "pandas_dataframe"


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSED = "closed"


def collecting() -> bool:
    """Whether requests should bring their remote spans back (an unpaused profiler is active)."""
    return any(not p.paused for p in _active)


def deliver(records: list[dict[str, Any]]) -> None:
    """Hand span records that came back with a reply to every active profiler."""
    for p in tuple(_active):
        p._remote.extend(records)


def _check(resource: Any, format: Any, file: Any) -> None:
    if hasattr(resource, "write"):
        raise TypeError("profile() takes the output file as a keyword argument: profile(file=f)")
    if not isinstance(resource, Resource):
        raise ConfigError(f"resource must be Resource.All, Resource.Cpu or Resource.Npu "
                          f"(from client._profiler), got {resource!r}")
    if not isinstance(format, RecordFormat):
        raise ConfigError(f"format must be RecordFormat.ChromeTrace or RecordFormat.PandasDataFrame "
                          f"(from client._profiler), got {format!r}")
    if file is None:
        return
    if isinstance(file, (str, os.PathLike)):
        raise TypeError(f"file must be an open text file, not a path: with open({str(file)!r}, 'w') as f: "
                        "profile(file=f)")
    if not callable(getattr(file, "write", None)):
        raise TypeError(f"file must be an open text file (open(path, 'w')), got a {type(file).__name__}")
    if "b" in str(getattr(file, "mode", "")):
        raise TypeError("file is open in binary mode; open it as text: open(path, 'w')")


class Profiler:
    """Collects the spans of everything run while it is active; use :func:`profile`."""

    def __init__(self, resource: Resource = Resource.All, format: RecordFormat = RecordFormat.ChromeTrace,
                 file: IO[str] | None = None) -> None:
        _check(resource, format, file)
        self.resource = resource
        self.format = format
        self.file = file
        self._state = _State.NEW
        self._lock = threading.Lock()
        self._local: list[ReadableSpan] = []
        self._remote: list[dict[str, Any]] = []
        self._converted: list[dict[str, Any]] = []
        self._convert_lock = threading.Lock()
        self._pauses: list[list[int | None]] = []  # [start, end or None while paused], time.time_ns()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Profiler:
        """Begin collecting (``with`` does this); a closed profiler cannot start again."""
        with self._lock:
            if self._state is _State.CLOSED:
                raise ConfigError("this profiler is closed; start a new one with profile()")
            if self._state is _State.NEW:
                self._attach()
                self._state = _State.ACTIVE
        return self

    def close(self) -> None:
        """Stop collecting and write ``file`` in the chosen format; later calls do nothing."""
        with self._lock:
            if self._state is _State.CLOSED:
                return
            was_active = self._state is _State.ACTIVE
            self._state = _State.CLOSED
            self._detach()
        if was_active and self.file is not None:
            self._write(self.file)
            self.file.flush()

    def __enter__(self) -> Profiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attach(self) -> None:
        tracing.setup_tracing("client", instance="client")
        tracing.add_sink(self._local)
        _active.append(self)

    def _detach(self) -> None:
        tracing.remove_sink(self._local)
        if self in _active:
            _active.remove(self)

    def _write(self, file: IO[str]) -> None:
        if self.format is RecordFormat.PandasDataFrame:
            tables.write_csv(self.rows(), file)
        else:
            write_chrome_trace(self.records(), file)

    # -- recording ------------------------------------------------------------------------
    @contextlib.contextmanager
    def record(self, name: str) -> Iterator[None]:
        """A user span around any block of code; requests inside become its children."""
        if not isinstance(name, str):
            raise TypeError(f"record() takes a span name (str), got {name!r}")
        with tracing.tracer().start_as_current_span(name, attributes={"user": True}):
            yield

    def pause(self) -> None:
        """Drop spans that start from now until :meth:`resume` (the trace keeps a gap)."""
        with self._lock:
            if not self.paused:
                self._pauses.append([time.time_ns(), None])

    def resume(self) -> None:
        with self._lock:
            if self.paused:
                self._pauses[-1][1] = time.time_ns()

    @property
    def paused(self) -> bool:
        return bool(self._pauses) and self._pauses[-1][1] is None

    # -- data -----------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every span collected, as :func:`npusim.services.tracing.to_record` dicts."""
        with self._convert_lock:  # the sink only grows: convert the spans added since last time
            self._converted.extend(tracing.to_record(s) for s in self._local[len(self._converted):])
            local = list(self._converted)
        remote = list(self._remote)
        dropped = self._dropped(local, remote)
        seen: set[str] = set()
        out = []
        for r in (*local, *remote):
            sid = r["span_id"]
            if sid in seen or sid in dropped or not self._wanted(r):
                continue
            seen.add(sid)
            out.append(r)
        return out

    def _wanted(self, r: dict[str, Any]) -> bool:
        if self.resource is Resource.All:
            return True
        return (tables.category(r["name"]) == "NPU") == (self.resource is Resource.Npu)

    def _dropped(self, local: list[dict[str, Any]], remote: list[dict[str, Any]]) -> set[str]:
        """Spans started while paused, and the remote spans of requests made inside them."""
        if not self._pauses:
            return set()
        pauses = [(a, b if b is not None else 1 << 63) for a, b in self._pauses]
        roots = {r["span_id"] for r in local if any(a <= r["start"] < b for a, b in pauses)}
        if not roots:
            return roots
        parent = {r["span_id"]: r.get("parent_id") for r in (*local, *remote)}
        out = set(roots)
        for r in remote:
            sid, hops = r.get("parent_id"), 0
            while sid and hops < 64:
                if sid in roots:
                    out.add(r["span_id"])
                    break
                sid, hops = parent.get(sid), hops + 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """The DataFrame's rows without pandas: one dict per span with the SDK's columns."""
        return tables.rows(self.records())

    def get_pandas_dataframe(self) -> Any:
        """All spans as a ``pandas.DataFrame`` (needs ``pip install pandas``)."""
        return tables.dataframe(self.rows())

    def get_pandas_dataframe_with_filter(self, column: str, value: Any) -> Any:
        """The rows whose ``column`` equals ``value``, e.g. ``("name", "Inference")``."""
        if column not in tables.COLUMNS:
            raise ConfigError(f"unknown column {column!r}; the columns are {', '.join(tables.COLUMNS)}")
        return tables.dataframe([r for r in self.rows() if r[column] == value])

    def get_cpu_pandas_dataframe(self) -> Any:
        """The host's spans (``cat == "Runtime"``): requests, user records, CPU operators."""
        return self.get_pandas_dataframe_with_filter("cat", "Runtime")

    def get_npu_pandas_dataframe(self) -> Any:
        """The device's spans (``cat == "NPU"``)."""
        return self.get_pandas_dataframe_with_filter("cat", "NPU")

    def export_chrome_trace(self, filename: str | os.PathLike[str]) -> None:
        with open(filename, "w") as f:
            write_chrome_trace(self.records(), f)

    # -- tables ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Latency statistics (ns) of the ``Inference`` spans: count, min, max, mean, median, p90 … p99.9."""
        return tables.summary(self.records())

    def external_operators(self) -> list[dict[str, Any]]:
        """CPU operators by name: ``name``, ``average_elapsed`` (ns), ``count``, ``total_elapsed``."""
        return tables.external_operators(self.records())

    def npu_executions(self) -> list[dict[str, Any]]:
        """One row per NPU execution: PE, ``npu_total``, ``npu_run``, ``npu_io_wait``, ``queue`` (ns)."""
        return tables.npu_executions(self.records())

    def npu_operators(self) -> list[dict[str, Any]]:
        """NPU executions by program stage and PE: ``average_elapsed`` (ns) and ``count``."""
        return tables.npu_operators(self.records())

    def inferences(self) -> list[dict[str, Any]]:
        """One row per ``Inference``: latency, and CPU-operator, NPU-execution and device-job time inside it (ns)."""
        return tables.inferences(self.records())

    def operator_table(self) -> list[dict[str, Any]]:
        """Count and time of every CPU operator, NPU stage and request, by span name (µs)."""
        return tables.operator_table(self.records())

    def print_summary(self, file: IO[str] | None = None) -> None:
        show.print_summary(self.summary(), tables.PERCENTILES, file=file)

    def print_external_operators(self, file: IO[str] | None = None) -> None:
        show.print_table("External (CPU) operators", _EXTERNAL, self.external_operators(), file=file)

    def print_npu_executions(self, file: IO[str] | None = None) -> None:
        show.print_table("NPU executions", _EXECUTIONS, self.npu_executions(), file=file)

    def print_npu_operators(self, file: IO[str] | None = None) -> None:
        show.print_table("NPU operators", _NPU_OPERATORS, self.npu_operators(), file=file)

    def print_inferences(self, file: IO[str] | None = None) -> None:
        show.print_table("Inferences", _INFERENCES, self.inferences(), file=file)


_C = show.Column
_EXTERNAL = (_C("name", "name"), _C("average_elapsed (ns)", "average_elapsed", True), _C("count", "count", True),
             _C("total_elapsed (ns)", "total_elapsed", True))
_EXECUTIONS = (_C("trace_id", "trace_id"), _C("span_id", "span_id"), _C("pe_index", "pe_index"),
               _C("execution_index", "execution_index", True), _C("NPU Total (ns)", "npu_total", True),
               _C("NPU Run (ns)", "npu_run", True), _C("NPU IoWait (ns)", "npu_io_wait", True),
               _C("Queue (ns)", "queue", True), _C("bound_by", "bound_by"))
_NPU_OPERATORS = (_C("name", "name"), _C("pe_index", "pe_index"), _C("average_elapsed (ns)", "average_elapsed", True),
                  _C("count", "count", True))
_INFERENCES = (_C("trace_id", "trace_id"), _C("span_id", "span_id"), _C("device", "device"),
               _C("dur (ns)", "dur", True), _C("CPU operators (ns)", "cpu_operators", True),
               _C("NPU execution (ns)", "npu_execution", True), _C("NPU job (ns)", "npu_job", True))


def profile(resource: Resource = Resource.All, format: RecordFormat = RecordFormat.ChromeTrace,
            file: IO[str] | None = None) -> Profiler:
    """Profile everything inside the ``with`` block; write ``file`` at exit.

    Args:
        resource: ``Resource.All`` (default), ``Resource.Cpu`` (host spans only) or
            ``Resource.Npu`` (device spans only).
        format: ``RecordFormat.ChromeTrace`` (default: Chrome/Perfetto JSON) or
            ``RecordFormat.PandasDataFrame`` (CSV of the DataFrame's columns).
        file: an open text file to write at exit, or None to keep the data in memory only.

    Raises:
        ConfigError: ``resource`` or ``format`` is not one of the enum members.
        TypeError: ``file`` is not an open text file.
    """
    return Profiler(resource, format, file)


# -- NPUSIM_PROFILER_OUTPUT_PATH ------------------------------------------------------------


class _SharedProfiler(Profiler):
    """The environment's profiler: one per output path and process, shared by its sessions.

    Each :func:`session_profiler` call takes a use and each :meth:`close` gives one back;
    when the last use is given back it stops and writes the file. A later session starts it
    again and the file then holds both sessions' spans.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._attach()
                self._state = _State.ACTIVE
            self._users += 1

    def close(self) -> None:
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users:
                return
            self._state = _State.CLOSED
            self._detach()
        self.write()

    def write(self) -> None:
        """Replace the file atomically with everything collected so far; log, never raise."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                write_chrome_trace(self.records(), f)
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("could not write the profile %s=%s: %s", ENV_OUTPUT_PATH, self.path, e)
            with contextlib.suppress(OSError):
                os.remove(tmp)


_shared: dict[str, _SharedProfiler] = {}
_shared_lock = threading.Lock()


def session_profiler() -> Profiler | None:
    """The profiler a session uses when ``NPUSIM_PROFILER_OUTPUT_PATH`` is set, started; else None.

    Call :meth:`Profiler.close` once per call when the session closes. All sessions of a
    process with the same path share one profiler and one file (see the module docstring).

    Raises:
        ConfigError: the path's directory does not exist or cannot be written.
    """
    raw = os.environ.get(ENV_OUTPUT_PATH, "").strip()
    if not raw:
        return None
    path = os.path.abspath(os.path.expanduser(raw.replace("{pid}", str(os.getpid()))))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ConfigError(f"{ENV_OUTPUT_PATH}={raw!r}: the directory {folder!r} does not exist or is not "
                          "writable; point it at a file in a writable directory, or unset it")
    with _shared_lock:
        p = _shared.get(path)
        if p is None:
            p = _shared[path] = _SharedProfiler(path)
    p.acquire()
    return p


def _write_open_profiles() -> None:
    """At exit: write the files of profilers whose sessions were never closed."""
    for p in list(_shared.values()):
        if p._users:
            p.write()


atexit.register(_write_open_profiles)
