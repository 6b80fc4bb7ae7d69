"""Span records → Chrome / Perfetto trace JSON (open it at https://ui.perfetto.dev).

Each process is a track group (client, each worker, each device, the compiler) and each
``track`` inside it a thread (the PEs of a device). A span whose parent lives in another
process gets a flow arrow, so one request reads left to right across the processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["chrome_trace", "write_chrome_trace", "category"]

_PROCESS_ORDER = ("client", "worker", "npu", "compiler")


def category(name: str) -> str:
    if name.startswith("npu."):
        return "NPU"
    if name.startswith("cpu."):
        return "CPU"
    return "Runtime"


def _sort_key(label: str) -> int:
    for i, prefix in enumerate(_PROCESS_ORDER):
        if label.startswith(prefix):
            return i
    return len(_PROCESS_ORDER)


def chrome_trace(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    recs = sorted((r for r in records if r.get("end")), key=lambda r: r["start"])
    events: list[dict[str, Any]] = []
    if not recs:
        return {"traceEvents": events, "displayTimeUnit": "ms"}
    t0 = recs[0]["start"]
    tids: dict[tuple[int, str], int] = {}
    procs: set[int] = set()
    where: dict[str, tuple[int, int]] = {}
    for r in recs:
        pid = int(r["pid"])
        if pid not in procs:
            procs.add(pid)
            events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{r['process']} ({pid})"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                           "args": {"sort_index": _sort_key(r["process"])}})
        key = (pid, r["track"])
        if key not in tids:
            tids[key] = len([k for k in tids if k[0] == pid]) + 1
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[key],
                           "args": {"name": r["track"]}})
        tid = tids[key]
        where[r["span_id"]] = (pid, tid)
        args = dict(r.get("attrs") or {})
        args.update(trace_id=r["trace_id"], span_id=r["span_id"], parent_id=r.get("parent_id"))
        events.append({"name": r["name"], "cat": category(r["name"]), "ph": "X", "pid": pid, "tid": tid,
                       "ts": (r["start"] - t0) / 1000.0, "dur": (r["end"] - r["start"]) / 1000.0, "args": args})
    for r in recs:
        parent = where.get(r.get("parent_id") or "")
        child = where[r["span_id"]]
        if parent is not None and parent[0] != child[0]:
            ts = (r["start"] - t0) / 1000.0
            fid = int(r["span_id"][-12:], 16)
            events.append({"ph": "s", "id": fid, "name": "request", "cat": "flow", "pid": parent[0],
                           "tid": parent[1], "ts": ts})
            events.append({"ph": "f", "bp": "e", "id": fid, "name": "request", "cat": "flow", "pid": child[0],
                           "tid": child[1], "ts": ts})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(records: Iterable[dict[str, Any]], file: IO[str]) -> None:
    json.dump(chrome_trace(records), file)
