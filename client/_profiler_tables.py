"""The profiler's tables: span records → the SDK's DataFrame rows and the ``print_*`` reports.

Pure functions over the records of :func:`npusim.services.tracing.to_record`, so each table is
tested from synthetic records, without processes. Every time is in integer nanoseconds,
as in the SDK (``operator_table`` alone keeps its microseconds).

How npusim's spans map onto the SDK's columns:

- ``cat``: ``NPU`` for the device's ``npu.*`` spans; ``Runtime`` for everything on the host
  (``Inference``, ``record()`` blocks, ``worker.job`` and the CPU operators ``cpu.*``, which
  the SDK also files under ``Runtime`` as external operators).
- ``thread.id``: the timeline: the PE for device spans (``npu0pe0-1``), else the process
  (``client``, ``worker-0``, ``compiler``).
- ``pe_index``: the PE as the daemon names it (``pe0``, ``pe1``, ``pe0-1``): a fused pair has
  no single integer index.
- ``execution_index``: the n-th device job on its PE in this profile, shared by the job's
  ``npu.*`` spans; ``operator_index``: the n-th CPU operator of its worker job.
- ``dram_base`` and ``instruction_index`` stay empty: the emulator has no per-instruction trace.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

from npusim.services.chrome_trace import category as trace_category

__all__ = [
    "COLUMNS",
    "PERCENTILES",
    "category",
    "dataframe",
    "external_operators",
    "inferences",
    "npu_executions",
    "npu_operators",
    "operator_table",
    "rows",
    "summary",
    "write_csv",
]

COLUMNS = ("trace_id", "parent_span_id", "span_id", "start", "end", "cat", "name", "thread.id",
           "dram_base", "pe_index", "execution_index", "instruction_index", "operator_index", "dur")
ROOT_PARENT = "0000000000000000"
INFERENCE = "Inference"
PERCENTILES = (90.0, 95.0, 97.0, 99.0, 99.9)
_NULLABLE_INTS = ("dram_base", "execution_index", "instruction_index", "operator_index")

Record = dict[str, Any]


def category(name: str) -> str:
    """The SDK's ``cat``: ``NPU`` on the device, ``Runtime`` on the host."""
    return "NPU" if name.startswith("npu.") else "Runtime"


def _complete(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.get("start") is not None and r.get("end") is not None]


def _dur(r: Record) -> int:
    return max(0, int(r["end"]) - int(r["start"]))


def _thread(r: Record) -> str:
    track = str(r.get("track") or "main")
    return str(r.get("process") or "?") if track == "main" else track


def _pe(r: Record) -> str | None:
    pe = (r.get("attrs") or {}).get("pe")
    if pe:
        return str(pe)
    track = str(r.get("track") or "")
    at = track.rfind("pe")
    return track[at:] if at >= 0 and r["name"].startswith("npu.") else None


def _by_start(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (int(r["start"]), int(r["end"])))


def _children(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.get("parent_id"):
            out[r["parent_id"]].append(r)
    return out


def _descendants(root: Record, children: dict[str, list[Record]]) -> list[Record]:
    out, todo, seen = [], [root["span_id"]], {root["span_id"]}
    while todo:
        for c in children.get(todo.pop(), ()):
            if c["span_id"] not in seen:
                seen.add(c["span_id"])
                out.append(c)
                todo.append(c["span_id"])
    return out


def _execution_indices(recs: list[Record]) -> dict[str, int]:
    """span id → execution index, for every ``npu.*`` span of a device job."""
    count: dict[str, int] = defaultdict(int)
    of_job: dict[str, int] = {}
    out: dict[str, int] = {}
    for r in recs:  # in start order
        if r["name"] == "npu.exec":
            i = count[_thread(r)]
            count[_thread(r)] += 1
            out[r["span_id"]] = i
            if r.get("parent_id"):
                of_job[r["parent_id"]] = i
    for r in recs:
        if r["name"].startswith("npu.") and r["span_id"] not in out:
            i = of_job.get(r["span_id"], of_job.get(r.get("parent_id") or ""))
            if i is not None:
                out[r["span_id"]] = i
    return out


def _operator_indices(recs: list[Record]) -> dict[str, int]:
    """span id → position of a CPU operator among the CPU operators of its worker job."""
    count: dict[str, int] = defaultdict(int)
    out: dict[str, int] = {}
    for r in recs:  # in start order
        if r["name"].startswith("cpu."):
            parent = r.get("parent_id") or ""
            out[r["span_id"]] = count[parent]
            count[parent] += 1
    return out


def rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One dict per span with the SDK's DataFrame columns (:data:`COLUMNS`), in start order."""
    recs = _by_start(_complete(records))
    executions = _execution_indices(recs)
    operators = _operator_indices(recs)
    out = []
    for r in recs:
        name = r["name"]
        out.append({
            "trace_id": r["trace_id"],
            "parent_span_id": r.get("parent_id") or ROOT_PARENT,
            "span_id": r["span_id"],
            "start": int(r["start"]),
            "end": int(r["end"]),
            "cat": category(name),
            "name": name,
            "thread.id": _thread(r),
            "dram_base": None,
            "pe_index": _pe(r),
            "execution_index": executions.get(r["span_id"]),
            "instruction_index": None,
            "operator_index": operators.get(r["span_id"]),
            "dur": _dur(r),
        })
    return out


def write_csv(table: list[dict[str, Any]], file: IO[str]) -> None:
    """The rows as CSV with the DataFrame's header (no pandas needed); empty cells for nulls."""
    w = csv.DictWriter(file, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in table:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def dataframe(table: list[dict[str, Any]]) -> Any:
    """The rows as a ``pandas.DataFrame`` (pandas is optional: imported here, on demand)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError("the profiler's DataFrames need pandas, which npusim does not install: "
                          "`pip install pandas` (rows() gives the same data as a list of dicts)") from e
    df = pd.DataFrame.from_records(table, columns=list(COLUMNS))
    for col in ("start", "end", "dur"):
        df[col] = df[col].astype("int64")
    for col in _NULLABLE_INTS:
        df[col] = df[col].astype("Int64")
    return df


# -- reports ------------------------------------------------------------------------------


def summary(records: Iterable[Record]) -> dict[str, Any]:
    """Latency statistics of the ``Inference`` spans (ns); ``None`` values when there were none."""
    lat = np.array([_dur(r) for r in _complete(records) if r["name"] == INFERENCE], dtype=np.int64)
    out: dict[str, Any] = {"count": int(lat.size)}
    keys = ["min", "max", "mean", "median", *(f"p{q:g}" for q in PERCENTILES)]
    if not lat.size:
        return out | dict.fromkeys(keys)
    pct = np.percentile(lat, PERCENTILES)
    values = [int(lat.min()), int(lat.max()), float(lat.mean()), float(np.median(lat)), *map(float, pct)]
    return out | dict(zip(keys, values))


def _operator_name(r: Record) -> str:
    name = r["name"].removeprefix("cpu.")
    if name == "fallback":
        ops = (r.get("attrs") or {}).get("ops")
        return f"fallback({ops})" if ops else "fallback"
    return name


def _aggregate(groups: dict[tuple[Any, ...], list[int]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for key, durs in groups.items():
        row = dict(zip(keys, key))
        row.update(average_elapsed=statistics.fmean(durs), count=len(durs), total_elapsed=sum(durs))
        out.append(row)
    return sorted(out, key=lambda r: (-r["average_elapsed"], str(r[keys[0]])))


def external_operators(records: Iterable[Record]) -> list[dict[str, Any]]:
    """CPU operators (Quantize, Lower, Pad, Unlower, Slice, Dequantize, fallback) by name."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for r in _complete(records):
        if r["name"].startswith("cpu."):
            groups[(_operator_name(r),)].append(_dur(r))
    return _aggregate(groups, ("name",))


def npu_executions(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per ``npu.exec``: total device time of its job (DMA in → DMA out), run, IO wait, queue.

    ``npu_total`` spans the job's ``npu.h2d`` start to its ``npu.d2h`` end (never less than
    the run), ``npu_run`` is the execution, ``npu_io_wait = npu_total - npu_run`` (never
    negative) and ``queue`` the FIFO wait before the DMA in.
    """
    recs = _by_start(_complete(records))
    children = _children(recs)
    executions = _execution_indices(recs)
    out = []
    for r in recs:
        if r["name"] != "npu.exec":
            continue
        stages = {s["name"]: s for s in children.get(r.get("parent_id") or "", ())}
        h2d, d2h, queue = stages.get("npu.h2d"), stages.get("npu.d2h"), stages.get("npu.queue")
        run = _dur(r)
        start = min(int(r["start"]), int(h2d["start"])) if h2d else int(r["start"])
        end = max(int(r["end"]), int(d2h["end"])) if d2h else int(r["end"])
        total = max(end - start, run)
        attrs = r.get("attrs") or {}
        out.append({
            "trace_id": r["trace_id"], "span_id": r["span_id"], "pe_index": _pe(r),
            "execution_index": executions.get(r["span_id"]), "program": _program(attrs),
            "npu_total": total, "npu_run": run, "npu_io_wait": total - run,
            "queue": _dur(queue) if queue else 0, "bound_by": attrs.get("bound_by"),
        })
    return out


def _program(attrs: dict[str, Any]) -> str:
    name = str(attrs.get("program") or "program")
    return f"{name} (stage {attrs['stage']})" if "stage" in attrs else name


def npu_operators(records: Iterable[Record]) -> list[dict[str, Any]]:
    """NPU executions grouped by program stage and PE: mean execution time and count."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for r in _complete(records):
        if r["name"] == "npu.exec":
            groups[(_program(r.get("attrs") or {}), _pe(r))].append(_dur(r))
    return _aggregate(groups, ("name", "pe_index"))


def inferences(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per ``Inference``: its latency and the time inside it of its CPU operators, of
    its NPU executions, and of its device jobs from arrival at the daemon to the reply
    (``npu_job``: queue, DMA, execution, and the host's own computation when it is slower
    than the emulated chip — ``bound_by == "host"`` in :func:`npu_executions`)."""
    recs = _by_start(_complete(records))
    children = _children(recs)
    out = []
    for r in recs:
        if r["name"] != INFERENCE:
            continue
        below = _descendants(r, children)
        out.append({
            "trace_id": r["trace_id"], "span_id": r["span_id"],
            "device": (r.get("attrs") or {}).get("device"), "dur": _dur(r),
            "cpu_operators": sum(_dur(s) for s in below if s["name"].startswith("cpu.")),
            "npu_execution": sum(_dur(s) for s in below if s["name"] == "npu.exec"),
            "npu_job": sum(_dur(s) for s in below if s["name"] == "npu.job"),
        })
    return out


def operator_table(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Count and time of every span name, in µs; ``where`` is the trace file's category."""
    by_name: dict[str, list[float]] = {}
    for r in _complete(records):
        by_name.setdefault(r["name"], []).append(_dur(r) / 1000.0)
    order = {"CPU": 0, "NPU": 1, "Runtime": 2}
    out = []
    for name, durs in by_name.items():
        durs.sort()
        out.append({
            "name": name, "where": trace_category(name), "count": len(durs), "mean_us": statistics.fmean(durs),
            "p50_us": durs[len(durs) // 2], "p99_us": durs[min(len(durs) - 1, int(len(durs) * 0.99))],
        })
    return sorted(out, key=lambda r: (order.get(r["where"], 3), -r["mean_us"]))
