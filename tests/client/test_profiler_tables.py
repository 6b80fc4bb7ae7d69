"""The profiler's tables, from synthetic span records (no processes)."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import numpy as np
import pytest

from npusim.client import _profiler_tables as tables

pytestmark = pytest.mark.timeout(30)

MS = 1_000_000
_ids = itertools.count(1)


def rec(name: str, start: int, end: int, *, parent: dict[str, Any] | None = None, process: str = "client",
        pid: int = 100, track: str = "main", trace: str | None = None, **attrs: Any) -> dict[str, Any]:
    return {
        "name": name, "trace_id": trace or (parent["trace_id"] if parent else f"{next(_ids):032x}"),
        "span_id": f"{next(_ids):016x}", "parent_id": parent["span_id"] if parent else None,
        "start": start, "end": end, "process": process, "pid": pid, "track": track, "attrs": attrs,
    }


def request(t0: int, latency: int, *, parent: dict[str, Any] | None = None, pe: str = "pe0-1",
            exec_ns: int = 30_000, h2d_ns: int = 2_000, d2h_ns: int = 1_000, queue_ns: int = 500,
            ops: tuple[tuple[str, int], ...] = (("cpu.Quantize", 100_000), ("cpu.Dequantize", 50_000)),
            program: str = "net", stage: int = 0) -> list[dict[str, Any]]:
    """One Inference with its worker job, CPU operators and device job, as the stack makes them."""
    inf = rec("Inference", t0, t0 + latency, parent=parent, device=f"npu0{pe}")
    job = rec("worker.job", t0 + 10_000, t0 + latency - 10_000, parent=inf, process="worker-0", pid=200, worker=0)
    out = [inf, job]
    t = job["start"] + 1_000
    for name, dur in ops:
        out.append(rec(name, t, t + dur, parent=job, process="worker-0", pid=200, bytes_in=10))
        t += dur + 1_000
    track = f"npu0{pe}"
    a = t
    npu = rec("npu.job", a, a + queue_ns + h2d_ns + exec_ns + d2h_ns + 5_000, parent=job, process="npu0", pid=300,
              track=track, pe=pe, stage=stage, program=program)
    out.append(npu)
    for name, dur, extra in (("npu.queue", queue_ns, {}), ("npu.h2d", h2d_ns, {"bytes": 1}),
                             ("npu.exec", exec_ns, {"pe": pe, "stage": stage, "program": program, "cycles": 9}),
                             ("npu.d2h", d2h_ns, {"bytes": 1})):
        out.append(rec(name, a, a + dur, parent=npu, process="npu0", pid=300, track=track, **extra))
        a += dur
    return out


def test_rows_have_the_sdk_columns_in_order() -> None:
    recs = request(0, 5 * MS)
    out = tables.rows(recs)
    assert tables.COLUMNS == ("trace_id", "parent_span_id", "span_id", "start", "end", "cat", "name", "thread.id",
                              "dram_base", "pe_index", "execution_index", "instruction_index", "operator_index", "dur")
    assert all(tuple(r) == tables.COLUMNS for r in out)
    assert [r["start"] for r in out] == sorted(r["start"] for r in out)
    by = {r["name"]: r for r in out}
    inf = by["Inference"]
    assert inf["parent_span_id"] == "0000000000000000" and inf["cat"] == "Runtime"
    assert inf["thread.id"] == "client" and inf["dur"] == 5 * MS and inf["pe_index"] is None
    assert by["worker.job"]["parent_span_id"] == inf["span_id"] and by["worker.job"]["thread.id"] == "worker-0"
    assert by["cpu.Quantize"]["cat"] == "Runtime", "external operators are Runtime spans, as in the SDK"
    assert (by["cpu.Quantize"]["operator_index"], by["cpu.Dequantize"]["operator_index"]) == (0, 1)
    for name in ("npu.job", "npu.queue", "npu.h2d", "npu.exec", "npu.d2h"):
        assert by[name]["cat"] == "NPU" and by[name]["thread.id"] == "npu0pe0-1", name
        assert by[name]["pe_index"] == "pe0-1" and by[name]["execution_index"] == 0, name
        assert by[name]["operator_index"] is None
    assert all(r["dram_base"] is None and r["instruction_index"] is None for r in out)
    assert all(r["dur"] == r["end"] - r["start"] for r in out)


def test_execution_index_counts_per_pe() -> None:
    recs = request(0, 5 * MS, pe="pe0") + request(1 * MS, 5 * MS, pe="pe1") + request(6 * MS, 5 * MS, pe="pe0")
    execs = [r for r in tables.rows(recs) if r["name"] == "npu.exec"]
    assert [(r["pe_index"], r["execution_index"]) for r in execs] == [("pe0", 0), ("pe1", 0), ("pe0", 1)]


def test_rows_skip_unfinished_spans() -> None:
    recs = request(0, MS)
    recs[0] = dict(recs[0], end=None)
    assert "Inference" not in {r["name"] for r in tables.rows(recs)}


def test_summary_statistics_in_ns() -> None:
    latencies = [(i + 1) * MS for i in range(10)]
    recs = [r for i, lat in enumerate(latencies) for r in request(i * 20 * MS, lat)]
    s = tables.summary(recs)
    assert s["count"] == 10
    assert (s["min"], s["max"]) == (MS, 10 * MS)
    assert s["mean"] == pytest.approx(5.5 * MS) and s["median"] == pytest.approx(5.5 * MS)
    for q in tables.PERCENTILES:
        assert s[f"p{q:g}"] == pytest.approx(np.percentile(latencies, q))
    assert list(s) == ["count", "min", "max", "mean", "median", "p90", "p95", "p97", "p99", "p99.9"]


def test_summary_without_inferences() -> None:
    s = tables.summary([rec("pre", 0, 10)])
    assert s["count"] == 0 and s["min"] is None and s["p99.9"] is None


def test_external_operators_by_name() -> None:
    recs = [r for i in range(4) for r in request(i * 10 * MS, 5 * MS, ops=(("cpu.Quantize", 100_000 + i * 10_000),
                                                                          ("cpu.Lower", 40_000)))]
    job = next(r for r in recs if r["name"] == "worker.job")
    recs.append(rec("cpu.fallback", 10, 30_010, parent=job, process="worker-0", pid=200, ops="Softmax,Add"))
    out = tables.external_operators(recs)
    assert [r["name"] for r in out] == ["Quantize", "Lower", "fallback(Softmax,Add)"], "mean time, descending"
    q = out[0]
    assert q["count"] == 4 and q["average_elapsed"] == pytest.approx(115_000) and q["total_elapsed"] == 460_000
    assert out[2]["count"] == 1 and out[2]["average_elapsed"] == 30_000
    assert not any(r["name"].startswith(("npu", "worker", "Inference")) for r in out)


def test_npu_executions_total_run_and_io_wait() -> None:
    recs = request(0, 5 * MS, exec_ns=30_000, h2d_ns=2_000, d2h_ns=1_000, queue_ns=700)
    (row,) = tables.npu_executions(recs)
    ex = next(r for r in recs if r["name"] == "npu.exec")
    assert row["span_id"] == ex["span_id"] and row["trace_id"] == ex["trace_id"]
    assert row["pe_index"] == "pe0-1" and row["execution_index"] == 0 and row["program"] == "net (stage 0)"
    assert (row["npu_total"], row["npu_run"], row["npu_io_wait"], row["queue"]) == (33_000, 30_000, 3_000, 700)


def test_npu_executions_never_underflow() -> None:
    recs = request(0, 5 * MS, exec_ns=30_000)
    ex = next(r for r in recs if r["name"] == "npu.exec")
    d2h = next(r for r in recs if r["name"] == "npu.d2h")
    d2h["end"] = d2h["start"] = ex["start"] + 10  # a DMA window shorter than the run (clock skew)
    lone = rec("npu.exec", 0, 50_000, process="npu0", pid=300, track="npu0pe1", pe="pe1")  # no job, no DMA spans
    rows = {r["span_id"]: r for r in tables.npu_executions([*recs, lone])}
    assert rows[ex["span_id"]]["npu_io_wait"] >= 0 and rows[ex["span_id"]]["npu_total"] >= 30_000
    assert (rows[lone["span_id"]]["npu_total"], rows[lone["span_id"]]["npu_io_wait"]) == (50_000, 0)
    assert all(r["npu_io_wait"] == r["npu_total"] - r["npu_run"] for r in rows.values())


def test_npu_operators_group_by_stage_and_pe() -> None:
    recs = (request(0, 5 * MS, exec_ns=10_000, stage=0) + request(10 * MS, 5 * MS, exec_ns=20_000, stage=0)
            + request(20 * MS, 5 * MS, exec_ns=90_000, stage=1) + request(30 * MS, 5 * MS, exec_ns=40_000, pe="pe0"))
    out = tables.npu_operators(recs)
    assert [(r["name"], r["pe_index"], r["count"], r["average_elapsed"]) for r in out] == [
        ("net (stage 1)", "pe0-1", 1, 90_000), ("net (stage 0)", "pe0", 1, 40_000), ("net (stage 0)", "pe0-1", 2, 15_000)]


def test_inferences_follow_parent_links_not_trace_ids() -> None:
    user = rec("inf", 0, 30 * MS, user=True)
    recs = [user, *request(1 * MS, 8 * MS, parent=user, exec_ns=30_000),
            *request(12 * MS, 9 * MS, parent=user, exec_ns=40_000, ops=(("cpu.Quantize", 7_000),))]
    assert len({r["trace_id"] for r in recs}) == 1, "both requests share the user span's trace"
    out = tables.inferences(recs)
    assert [(r["dur"], r["cpu_operators"], r["npu_execution"], r["npu_job"], r["device"]) for r in out] == [
        (8 * MS, 150_000, 30_000, 38_500, "npu0pe0-1"), (9 * MS, 7_000, 40_000, 48_500, "npu0pe0-1")]


def test_operator_table_keeps_its_microseconds() -> None:
    recs = request(0, 5 * MS) + request(10 * MS, 7 * MS)
    table = {r["name"]: r for r in tables.operator_table(recs)}
    assert table["Inference"]["count"] == 2 and table["Inference"]["mean_us"] == pytest.approx(6000.0)
    assert table["cpu.Quantize"]["where"] == "CPU" and table["npu.exec"]["where"] == "NPU"


def test_write_csv_without_pandas() -> None:
    out = tables.rows(request(0, MS))
    buf = io.StringIO()
    tables.write_csv(out, buf)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(back[0]) == list(tables.COLUMNS)
    assert len(back) == len(out)
    assert back[0]["name"] == "Inference" and back[0]["pe_index"] == "" and int(back[0]["dur"]) == MS


def test_dataframe_without_pandas_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas → ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        tables.dataframe(tables.rows(request(0, MS)))


def test_dataframe_with_pandas() -> None:
    pd = pytest.importorskip("pandas")
    df = tables.dataframe(tables.rows(request(0, MS)))
    assert isinstance(df, pd.DataFrame)
    assert tuple(df.columns) == tables.COLUMNS
    assert str(df["dur"].dtype) == "int64" and str(df["operator_index"].dtype) == "Int64"
    assert (df["dur"] == df["end"] - df["start"]).all()
