"""Span records → Chrome / Perfetto trace JSON (open it at https://ui.perfetto.dev).

Each process is a track group (client, each worker, each device, the compiler, in that
order) and each ``track`` inside it a thread (the PEs of a device: ``npu0pe0``,
``npu0pe1``, ``npu0pe0-1``). Metadata events (``process_name``, ``process_sort_index``,
``thread_name``, ``thread_sort_index``) come first, then one complete (``"X"``) event per
span in start order, with its ids and attributes in ``args``. A span whose parent lives in
another process gets a flow arrow, so one request reads left to right across the processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["category", "chrome_trace", "write_chrome_trace"]

_PROCESS_ORDER = ("client", "worker", "npu", "compiler")
_PE_ORDER = ("pe0", "pe1", "pe0-1")


def category(name: str) -> str:
    if name.startswith("npu."):
        return "NPU"
    if name.startswith("cpu."):
        return "CPU"
    return "Runtime"


def _number(label: str) -> int:
    m = re.search(r"(\d+)$", label.partition("pe")[0] if label.startswith("npu") else label)
    return int(m.group(1)) if m else 0


def _sort_key(label: str) -> int:
    """client, worker-0, worker-1, …, npu0, npu1, …, compiler, then anything else."""
    for i, prefix in enumerate(_PROCESS_ORDER):
        if label.startswith(prefix):
            return i * 1000 + min(_number(label), 999)
    return len(_PROCESS_ORDER) * 1000


def _thread_key(track: str) -> tuple[int, str]:
    """The main thread first, then a device's PEs in pe0, pe1, pe0-1 order."""
    if track == "main":
        return (0, track)
    for i, pe in enumerate(_PE_ORDER):
        if track.endswith(pe):
            return (1 + i, track)
    return (1 + len(_PE_ORDER), track)


def chrome_trace(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    recs = []
    for r in sorted((r for r in records if r.get("end") is not None), key=lambda r: (r["start"], r["end"])):
        if r["span_id"] not in seen:  # a span delivered twice is drawn once
            seen.add(r["span_id"])
            recs.append(r)
    meta: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    if not recs:
        return {"traceEvents": events, "displayTimeUnit": "ms"}
    t0 = recs[0]["start"]

    labels: dict[int, str] = {}
    tracks: dict[int, set[str]] = {}
    for r in recs:
        pid = int(r["pid"])
        labels.setdefault(pid, str(r["process"]))
        tracks.setdefault(pid, set()).add(str(r["track"]))
    tids: dict[tuple[int, str], int] = {}
    for pid in sorted(labels, key=lambda p: (_sort_key(labels[p]), p)):
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{labels[pid]} ({pid})"}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                     "args": {"sort_index": _sort_key(labels[pid])}})
        for i, track in enumerate(sorted(tracks[pid], key=_thread_key), start=1):
            tids[(pid, track)] = i
            meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": i, "args": {"name": track}})
            meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": i, "args": {"sort_index": i}})

    where: dict[str, tuple[int, int]] = {}
    for r in recs:
        pid = int(r["pid"])
        tid = tids[(pid, str(r["track"]))]
        where[r["span_id"]] = (pid, tid)
        args = dict(r.get("attrs") or {})
        args.update(trace_id=r["trace_id"], span_id=r["span_id"], parent_id=r.get("parent_id"))
        events.append({"name": r["name"], "cat": category(r["name"]), "ph": "X", "pid": pid, "tid": tid,
                       "ts": (r["start"] - t0) / 1000.0, "dur": max(0, r["end"] - r["start"]) / 1000.0,
                       "args": args})
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
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}


def write_chrome_trace(records: Iterable[dict[str, Any]], file: IO[str]) -> None:
    json.dump(chrome_trace(records), file)
