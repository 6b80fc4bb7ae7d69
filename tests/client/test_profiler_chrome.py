"""The Chrome/Perfetto trace the profiler writes (services/chrome_trace.py), from synthetic records."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from npusim.services.chrome_trace import chrome_trace, write_chrome_trace

pytestmark = pytest.mark.timeout(30)


def rec(span: int, name: str, process: str, pid: int, start: int, end: int | None, *, parent: int | None = None,
        track: str = "main", **attrs: Any) -> dict[str, Any]:
    return {"name": name, "trace_id": "a" * 32, "span_id": f"{span:016x}",
            "parent_id": f"{parent:016x}" if parent else None, "start": start, "end": end,
            "process": process, "pid": pid, "track": track, "attrs": attrs}


RECORDS = [  # deliberately not in process order
    rec(9, "compile", "compiler", 50, 500, 900),
    rec(7, "npu.exec", "npu1", 41, 5_000, 6_000, parent=6, track="npu1pe0-1"),
    rec(6, "npu.job", "npu1", 41, 4_000, 7_000, parent=5, track="npu1pe0-1"),
    rec(4, "npu.exec", "npu0", 40, 3_500, 3_900, parent=3, track="npu0pe1"),
    rec(3, "npu.job", "npu0", 40, 3_000, 4_500, parent=2, track="npu0pe1"),
    rec(11, "npu.exec", "npu0", 40, 3_100, 3_300, parent=10, track="npu0pe0"),
    rec(10, "npu.job", "npu0", 40, 3_050, 3_400, parent=2, track="npu0pe0"),
    rec(5, "worker.job", "worker-1", 31, 2_500, 8_000, parent=1),
    rec(2, "worker.job", "worker-0", 30, 2_000, 5_000, parent=1),
    rec(8, "cpu.Quantize", "worker-0", 30, 2_100, 2_900, parent=2),
    rec(1, "Inference", "client", 10, 1_000, 10_000),
    rec(12, "unfinished", "client", 10, 1_500, None),
]


def test_metadata_first_and_processes_in_pipeline_order() -> None:
    events = chrome_trace(RECORDS)["traceEvents"]
    kinds = [e["ph"] for e in events]
    first_x = kinds.index("X")
    assert set(kinds[:first_x]) == {"M"} and "M" not in kinds[first_x:]
    names = [e["args"]["name"] for e in events if e["name"] == "process_name"]
    assert names == ["client (10)", "worker-0 (30)", "worker-1 (31)", "npu0 (40)", "npu1 (41)", "compiler (50)"]
    order = {e["pid"]: e["args"]["sort_index"] for e in events if e["name"] == "process_sort_index"}
    assert sorted(order, key=order.__getitem__) == [10, 30, 31, 40, 41, 50]


def test_pes_are_threads_in_pe_order() -> None:
    events = chrome_trace(RECORDS)["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads[(40, 1)] == "npu0pe0" and threads[(40, 2)] == "npu0pe1"
    assert threads[(41, 1)] == "npu1pe0-1" and threads[(10, 1)] == "main"
    sort = {(e["pid"], e["tid"]): e["args"]["sort_index"] for e in events if e["name"] == "thread_sort_index"}
    assert set(sort) == set(threads)
    spans = {e["name"] + e["args"]["span_id"][-2:]: e for e in events if e["ph"] == "X"}
    assert threads[(spans["npu.exec04"]["pid"], spans["npu.exec04"]["tid"])] == "npu0pe1"
    assert threads[(spans["npu.exec0b"]["pid"], spans["npu.exec0b"]["tid"])] == "npu0pe0"


def test_complete_events_in_microseconds_from_the_first_span() -> None:
    events = chrome_trace(RECORDS)["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert [e["ts"] for e in spans] == sorted(e["ts"] for e in spans)
    assert "unfinished" not in {e["name"] for e in spans}
    first = spans[0]
    assert first["name"] == "compile" and first["ts"] == 0.0 and first["dur"] == 0.4
    quantize = next(e for e in spans if e["name"] == "cpu.Quantize")
    assert quantize["cat"] == "CPU" and quantize["ts"] == 1.6 and quantize["dur"] == 0.8
    assert quantize["args"]["parent_id"] == f"{2:016x}" and quantize["args"]["trace_id"] == "a" * 32


def test_flow_arrows_only_between_processes() -> None:
    events = chrome_trace(RECORDS)["traceEvents"]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert set(starts) == set(ends)
    hops = sorted((starts[i]["pid"], ends[i]["pid"]) for i in starts)
    # Inference→2 workers, worker-0→npu0 twice, worker-1→npu1; none inside a process
    assert hops == [(10, 30), (10, 31), (30, 40), (30, 40), (31, 41)]


def test_a_span_delivered_twice_is_drawn_once() -> None:
    events = chrome_trace([*RECORDS, dict(RECORDS[-2])])["traceEvents"]
    assert [e["name"] for e in events if e["ph"] == "X"].count("Inference") == 1


def test_empty_and_written_as_json() -> None:
    assert chrome_trace([]) == {"traceEvents": [], "displayTimeUnit": "ms"}
    buf = io.StringIO()
    write_chrome_trace(RECORDS, buf)
    assert json.loads(buf.getvalue())["displayTimeUnit"] == "ms"
