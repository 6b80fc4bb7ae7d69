"""The profiler object in one process: arguments, output files, pause/resume, resources, printing,
and the ``NPUSIM_PROFILER_OUTPUT_PATH`` switch. Remote spans are handed in with ``deliver()``
as the session does; the stack itself is exercised in ``test_profiler_stack.py``."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from npusim.client import _profiler
from npusim.client._profiler import ENV_OUTPUT_PATH, Profiler, RecordFormat, Resource, profile, session_profiler
from npusim.services import tracing
from npusim.services.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def _ids() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _remote(name: str, trace_id: str, parent: str, span: int, start: int, dur: int = 1000,
            process: str = "npu0", track: str = "npu0pe0", **attrs: Any) -> dict[str, Any]:
    return {"name": name, "trace_id": trace_id, "span_id": f"{span:016x}", "parent_id": parent, "start": start,
            "end": start + dur, "process": process, "pid": 4242, "track": track, "attrs": attrs}


def inference(*, exec_ns: int = 5000) -> None:
    """An ``Inference`` span whose worker and device spans come back through ``deliver()``."""
    with tracing.tracer().start_as_current_span("Inference", attributes={"device": "npu0pe0"}):
        tid, sid = _ids()
        t = time.time_ns()
    job = int(sid, 16) ^ 0xABC
    _profiler.deliver([
        _remote("worker.job", tid, sid, job, t, 50_000, process="worker-0", track="main"),
        _remote("cpu.Quantize", tid, f"{job:016x}", job + 1, t + 100, 2000, process="worker-0", track="main"),
        _remote("npu.job", tid, f"{job:016x}", job + 2, t + 3000, exec_ns + 4000, pe="pe0"),
        _remote("npu.exec", tid, f"{job + 2:016x}", job + 3, t + 4000, exec_ns, pe="pe0", stage=0, program="m"),
    ])


@pytest.fixture(autouse=True)
def _no_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_profiler, "_shared", {})
    monkeypatch.delenv(ENV_OUTPUT_PATH, raising=False)
    yield
    for p in list(_profiler._active):
        p._detach()
    assert not tracing.active(), "a profiler was left collecting"


# -- arguments ----------------------------------------------------------------------------


def test_defaults_follow_the_sdk() -> None:
    p = profile()
    assert (p.resource, p.format, p.file) == (Resource.All, RecordFormat.ChromeTrace, None)
    assert {m.name for m in Resource} == {"All", "Cpu", "Npu"}
    assert {m.name for m in RecordFormat} == {"ChromeTrace", "PandasDataFrame"}


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"resource": "cpu"}, ConfigError, "Resource.Cpu"),
    ({"resource": 1}, ConfigError, "Resource.All"),
    ({"format": "csv"}, ConfigError, "RecordFormat.PandasDataFrame"),
    ({"file": "trace.json"}, TypeError, "open('trace.json', 'w')"),
    ({"file": 3}, TypeError, "open text file"),
])
def test_bad_arguments_say_what_to_pass(kwargs: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as e:
        profile(**kwargs)
    assert words in str(e.value)


def test_file_given_positionally_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"profile\(file=f\)"):
        profile(io.StringIO())  # type: ignore[arg-type]


def test_binary_file_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "t.json", "wb") as f, pytest.raises(TypeError, match="text"):
        profile(file=f)  # type: ignore[arg-type]


# -- output -------------------------------------------------------------------------------


def test_chrome_trace_written_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    with open(path, "w") as f, profile(file=f) as prof:
        with prof.record("pre"):
            pass
        inference()
    doc = json.loads(path.read_text())
    names = [e["name"] for e in doc["traceEvents"] if e["ph"] == "X"]
    assert {"pre", "Inference", "worker.job", "cpu.Quantize", "npu.job", "npu.exec"} <= set(names)
    assert [e["ph"] for e in doc["traceEvents"][:2]] == ["M", "M"], "metadata first"


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    buf = io.StringIO()
    prof = profile(file=buf).start()
    inference()
    prof.close()
    written = buf.getvalue()
    prof.close()
    assert buf.getvalue() == written and json.loads(written)["traceEvents"]
    assert prof not in _profiler._active and not _profiler.collecting()
    with pytest.raises(ConfigError, match="profile()"):
        prof.start()


def test_dataframe_format_writes_csv() -> None:
    buf = io.StringIO()
    with profile(format=RecordFormat.PandasDataFrame, file=buf) as prof:
        inference()
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == ("trace_id", "parent_span_id", "span_id", "start", "end", "cat", "name", "thread.id",
                              "dram_base", "pe_index", "execution_index", "instruction_index", "operator_index",
                              "dur")
    assert [r["name"] for r in rows] == [r["name"] for r in prof.rows()]
    assert {r["cat"] for r in rows} == {"Runtime", "NPU"}


def test_a_profiler_without_file_keeps_data_in_memory() -> None:
    with profile() as prof:
        inference()
        inference()
    assert prof.summary()["count"] == 2
    assert len(prof.npu_executions()) == 2
    assert [r["name"] for r in prof.external_operators()] == ["Quantize"]


# -- pause / resume -----------------------------------------------------------------------


def test_pause_drops_spans_started_while_paused() -> None:
    with profile() as prof:
        inference()
        with prof.record("outer"):  # started before the pause, ends inside it: kept
            prof.pause()
            assert prof.paused and not _profiler.collecting(), "paused: requests need not bring spans back"
        inference()  # dropped, with the remote spans that came back for it
        with prof.record("during"):
            pass
        prof.resume()
        assert not prof.paused and _profiler.collecting()
        inference()
    names = [r["name"] for r in prof.records()]
    assert "outer" in names and "during" not in names
    assert names.count("Inference") == 2
    assert names.count("npu.exec") == 2 and names.count("worker.job") == 2 and names.count("cpu.Quantize") == 2
    assert prof.summary()["count"] == 2


def test_pause_and_resume_twice_are_harmless() -> None:
    with profile() as prof:
        prof.resume()
        prof.pause()
        prof.pause()
        inference()
        prof.resume()
        prof.resume()
        inference()
    assert prof.summary()["count"] == 1


# -- resources ----------------------------------------------------------------------------


def test_resource_cpu_keeps_host_spans_only() -> None:
    with profile(resource=Resource.Cpu) as prof:
        inference()
    cats = {r["cat"] for r in prof.rows()}
    assert cats == {"Runtime"}
    assert {r["name"] for r in prof.rows()} == {"Inference", "worker.job", "cpu.Quantize"}


def test_resource_npu_keeps_device_spans_only() -> None:
    with profile(resource=Resource.Npu) as prof:
        inference()
    assert {r["name"] for r in prof.rows()} == {"npu.job", "npu.exec"}
    assert prof.summary()["count"] == 0


# -- printing -----------------------------------------------------------------------------


def test_print_methods_draw_box_tables() -> None:
    with profile() as prof:
        for ns in (4000, 6000):
            inference(exec_ns=ns)
    outputs = {}
    for name in ("print_summary", "print_external_operators", "print_npu_executions", "print_npu_operators",
                 "print_inferences"):
        buf = io.StringIO()
        getattr(prof, name)(file=buf)
        outputs[name] = buf.getvalue()
        assert "┌" in outputs[name] and "┘" in outputs[name], name
    summary = outputs["print_summary"]
    assert "Inference Results Summary" in summary and "Inference counts" in summary
    for label in ("Min latency (ns)", "Median latency (ns)", "99.9 percentile latency (ns)"):
        assert label in summary
    assert "Quantize" in outputs["print_external_operators"]
    executions = outputs["print_npu_executions"]
    assert "NPU IoWait (ns)" in executions and "pe0" in executions
    assert "5000" in outputs["print_npu_operators"] and "m (stage 0)" in outputs["print_npu_operators"]
    for e in prof.npu_executions():
        assert e["span_id"] in executions, "wide tables are never truncated in a file"


def test_print_summary_without_inferences(capsys: pytest.CaptureFixture[str]) -> None:
    with profile() as prof:
        pass
    prof.print_summary()
    out = capsys.readouterr().out
    assert "Inference counts" in out and "-" in out


def test_dataframe_filter_rejects_unknown_column() -> None:
    with profile() as prof:
        pass
    with pytest.raises(ConfigError, match="trace_id"):
        prof.get_pandas_dataframe_with_filter("nmae", "Inference")


def test_dataframes_with_pandas() -> None:
    pytest.importorskip("pandas")
    with profile() as prof:
        inference()
    df = prof.get_pandas_dataframe()
    assert len(df) == len(prof.rows())
    assert set(prof.get_npu_pandas_dataframe()["name"]) == {"npu.job", "npu.exec"}
    assert set(prof.get_cpu_pandas_dataframe()["cat"]) == {"Runtime"}
    assert list(prof.get_pandas_dataframe_with_filter("name", "Inference")["name"]) == ["Inference"]


# -- deliver ------------------------------------------------------------------------------


def test_remote_spans_go_to_every_active_profiler() -> None:
    outer = profile().start()
    with profile() as inner:
        inference()
    inference()
    outer.close()
    assert inner.summary()["count"] == 1 and len(inner.npu_executions()) == 1
    assert outer.summary()["count"] == 2 and len(outer.npu_executions()) == 2
    _profiler.deliver([_remote("npu.exec", "0" * 32, "1" * 16, 99, 0)])  # after close: ignored
    assert len(outer.npu_executions()) == 2


# -- NPUSIM_PROFILER_OUTPUT_PATH ----------------------------------------------------------


def test_session_profiler_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert session_profiler() is None
    monkeypatch.setenv(ENV_OUTPUT_PATH, "  ")
    assert session_profiler() is None


def test_session_profiler_is_shared_and_written_at_last_close(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trace.json"
    monkeypatch.setenv(ENV_OUTPUT_PATH, str(path))
    a = session_profiler()
    b = session_profiler()
    assert isinstance(a, Profiler) and a is b, "sessions of one process share one profiler per path"
    inference()
    a.close()
    assert not path.exists(), "another session still uses the profiler"
    inference()
    b.close()
    doc = json.loads(path.read_text())
    assert [e["name"] for e in doc["traceEvents"] if e["ph"] == "X"].count("Inference") == 2
    b.close()  # one more close than uses: nothing happens
    assert not _profiler.collecting()
    inference()  # no session open: not profiled

    c = session_profiler()  # a later session appends to the same file
    assert c is a
    inference()
    c.close()
    doc = json.loads(path.read_text())
    assert [e["name"] for e in doc["traceEvents"] if e["ph"] == "X"].count("Inference") == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_session_profiler_path_takes_the_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OUTPUT_PATH, str(tmp_path / "trace-{pid}.json"))
    p = session_profiler()
    assert p is not None
    inference()
    p.close()
    assert (tmp_path / f"trace-{os.getpid()}.json").is_file()


def test_session_profiler_refuses_a_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OUTPUT_PATH, str(tmp_path / "nowhere" / "trace.json"))
    with pytest.raises(ConfigError, match=ENV_OUTPUT_PATH):
        session_profiler()


def test_unclosed_session_profiler_is_written_at_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trace.json"
    monkeypatch.setenv(ENV_OUTPUT_PATH, str(path))
    p = session_profiler()
    assert p is not None
    inference()
    _profiler._write_open_profiles()  # what atexit runs
    assert json.loads(path.read_text())["traceEvents"]
    p.close()


def test_a_failed_write_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    monkeypatch.setenv(ENV_OUTPUT_PATH, str(folder / "trace.json"))
    p = session_profiler()
    assert p is not None
    folder.rmdir()
    p.close()  # a session's close() must not fail because of its profile
    assert "could not write the profile" in caplog.text
