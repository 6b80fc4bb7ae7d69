"""Tracing across processes: OTLP export to a collector, Chrome trace files, and no cost when off.

The OTLP tests run a real collector endpoint (a small OTLP/HTTP receiver on 127.0.0.1) and a
real stack whose services export to it; the client runs in its own Python process so that
its tracer provider is configured from the environment (the test process may already have
one without OTLP).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from npusim import client
from npusim.client import _profiler, session
from npusim.services import tracing
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, start_stack

REPO = Path(__file__).resolve().parents[2]
SLACK_NS = 1_000_000  # wall-clock conversions (monotonic → epoch) in other processes
NPU_STAGES = ("npu.queue", "npu.h2d", "npu.exec", "npu.d2h")
CPU_OPS = ("cpu.Quantize", "cpu.Unlower", "cpu.Dequantize")
DEVICE = "npu0pe0-1"


# -- an OTLP/HTTP collector ------------------------------------------------------------


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: int
    end: int
    attrs: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """``POST /v1/traces`` on 127.0.0.1: decodes every export request and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    encoding = (self.headers.get("Content-Encoding") or "").lower()
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    receiver._store(ExportTraceServiceRequest.FromString(body))
                except Exception as e:  # noqa: BLE001 - reported by the test, never raised here
                    with receiver._lock:
                        receiver.errors.append(repr(e))
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    def _store(self, req: ExportTraceServiceRequest) -> None:
        got = []
        for rs in req.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            service = str(resource.get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        service=service, name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None, start=s.start_time_unix_nano,
                        end=s.end_time_unix_nano, attrs={kv.key: _value(kv.value) for kv in s.attributes},
                        resource=resource))
        with self._lock:
            self.requests += 1
            self.spans.extend(got)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, done: Callable[[list[Span]], bool], timeout_s: float = 10.0) -> list[Span]:
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.snapshot()
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# -- test A: the whole stack exports to one collector ------------------------------------

CLIENT_SCRIPT = """
import numpy as np
from npusim.client import session
from npusim.services.zoo import small_cnn

rng = np.random.default_rng(3)
sess = session.create(small_cnn(), device="npu0pe0-1")
try:
    for _ in range(3):
        (y,) = sess.run(rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
        assert y.shape == (1, 10), y.shape
finally:
    sess.close()
print("client done")
"""

OTEL_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
OTEL_UNSET = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME",
              "OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")


def _counts(spans: list[Span]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in spans:
        out[s.name] = out.get(s.name, 0) + 1
    return out


def _complete(spans: list[Span]) -> bool:
    c = _counts(spans)
    return (all(c.get(n, 0) >= 3 for n in ("Inference", "worker.job", "npu.job", *NPU_STAGES, *CPU_OPS))
            and c.get("session.create", 0) >= 1 and c.get("compile", 0) >= 1)


def run_traced_client(receiver: OtlpReceiver, base: Path, tag: str, script: str, *args: str) -> dict[str, str]:
    """Run ``script`` as a client process against a fresh stack, everything exporting to ``receiver``.

    Sets its own environment, for module-scoped fixtures (the autouse ``_isolated_env`` is per
    test). On return the stack has stopped: its services flushed their exporters on SIGTERM, and
    the client and its workers flushed theirs when they exited. Returns the services' log tails.
    """
    with pytest.MonkeyPatch.context() as mp:
        for var in (*OTEL_UNSET, "NPUSIM_COMPILER_ENDPOINT", "NPUSIM_DAEMON_ENDPOINTS", "NPUSIM_DEVICES"):
            mp.delenv(var, raising=False)
        mp.setenv("NPUSIM_CACHE_DIR", str(base / "program-cache"))
        mp.setenv("NPUSIM_RUN_DIR", f"/tmp/npusim-test-{os.getpid()}-{tag}")
        # services.launch.start passes env=None: the services inherit os.environ.
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        for k, v in OTEL_ENV.items():
            mp.setenv(k, v)
        with start_stack(devices=1) as stack:  # its own compiler cache: the compile really runs
            try:
                proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO,
                                      env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=60)
            finally:
                logs = {c.name: c.log_tail(30) for c in stack.children}
            assert proc.returncode == 0 and "client done" in proc.stdout, (
                f"client exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
                f"\nservice logs: {logs}")
    return logs


@pytest.fixture(scope="module")
def otlp_spans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Span]]:
    """Run a traced client (3 requests) against a stack exporting to a local collector.

    Module-scoped so that several tests can judge one run; it therefore sets its own
    environment (the autouse ``_isolated_env`` fixture is function-scoped).
    """
    receiver = OtlpReceiver()
    base = tmp_path_factory.mktemp("otlp")
    try:
        logs = run_traced_client(receiver, base, "otlp", CLIENT_SCRIPT)
        spans = receiver.wait_for(_complete, timeout_s=10.0)
        assert not receiver.errors, f"the receiver could not decode exports: {receiver.errors}"
        assert _complete(spans), (f"spans missing after 10 s: got {_counts(spans)} in {receiver.requests} export "
                                  f"request(s); service logs: {logs}")
        yield spans
    finally:
        receiver.close()


def _by_trace(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for s in spans:
        out.setdefault(s.trace_id, []).append(s)
    return out


def _one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected exactly one {name!r} span, got {len(found)}: {[s.name for s in spans]}"
    return found[0]


@pytest.mark.timeout(90)
def test_otlp_request_traces_span_client_worker_and_daemon(otlp_spans: list[Span]) -> None:
    traces = _by_trace(otlp_spans)
    inferences = [s for s in otlp_spans if s.name == "Inference"]
    assert len(inferences) == 3
    assert all(s.service == "npusim-client" for s in inferences)
    assert len({s.trace_id for s in inferences}) == 3, "every request must be its own trace"
    for inf in inferences:
        assert inf.parent_id is None, "a run() outside any span starts a new trace"
        assert inf.attrs.get("device") == DEVICE
        tr = traces[inf.trace_id]
        assert {s.service for s in tr} == {"npusim-client", "npusim-worker", "npusim-daemon"}, \
            [(s.service, s.name) for s in tr]
        job = _one(tr, "worker.job")
        assert job.service == "npusim-worker"
        assert job.parent_id == inf.span_id
        npu = _one(tr, "npu.job")
        assert npu.service == "npusim-daemon"
        assert npu.parent_id == job.span_id
        for name in NPU_STAGES:
            stage = _one(tr, name)
            assert stage.service == "npusim-daemon"
            assert stage.parent_id == npu.span_id, name
        cpu = [s for s in tr if s.name.startswith("cpu.")]
        assert {s.name for s in cpu} >= set(CPU_OPS)
        for s in cpu:
            assert s.service == "npusim-worker"
            assert s.parent_id == job.span_id, s.name
        assert _one(tr, "npu.exec").attrs.get("cycles", 0) > 0
        for s in tr:
            assert s.start <= s.end, s.name
            assert s.start >= inf.start - SLACK_NS, f"{s.name} starts {(inf.start - s.start) / 1e6:.3f} ms " \
                                                    "before its Inference"
            assert s.end <= inf.end + SLACK_NS, f"{s.name} ends {(s.end - inf.end) / 1e6:.3f} ms after its Inference"
    # every span of the requests belongs to one of the three traces (no orphans, no stray roots)
    request_names = {"worker.job", "npu.job", *NPU_STAGES}
    stray = [s for s in otlp_spans if (s.name in request_names or s.name.startswith("cpu."))
             and s.trace_id not in {i.trace_id for i in inferences}]
    assert not stray, [(s.service, s.name) for s in stray]


@pytest.mark.timeout(90)
def test_otlp_compile_is_a_child_of_session_create(otlp_spans: list[Span]) -> None:
    creates = [s for s in otlp_spans if s.name == "session.create"]
    assert len(creates) == 1 and creates[0].service == "npusim-client"
    create = creates[0]
    compiles = [s for s in otlp_spans if s.name == "compile"]
    assert len(compiles) == 1
    comp = compiles[0]
    assert comp.service == "npusim-compiler"
    assert comp.trace_id == create.trace_id
    assert comp.parent_id == create.span_id
    stages = [s for s in otlp_spans if s.name.startswith("compile.")]
    assert stages, "the compiler traces its stages"
    for s in stages:
        assert s.service == "npusim-compiler"
        assert s.trace_id == create.trace_id and s.parent_id == comp.span_id, s.name
        assert comp.start - SLACK_NS <= s.start <= s.end <= comp.end + SLACK_NS, s.name
    assert create.start - SLACK_NS <= comp.start <= comp.end <= create.end + SLACK_NS
    assert not {s.trace_id for s in otlp_spans if s.name == "Inference"} & {create.trace_id}


@pytest.mark.timeout(90)
def test_otlp_npu_exec_has_pe_and_cycles(otlp_spans: list[Span]) -> None:
    execs = [s for s in otlp_spans if s.name == "npu.exec"]
    assert len(execs) == 3
    for s in execs:
        assert s.attrs.get("cycles", 0) > 0
        assert s.attrs.get("pe") == "pe0-1", s.attrs


# -- test B: a Chrome trace file without any collector -----------------------------------


@pytest.mark.timeout(60)
def test_profile_writes_a_linked_chrome_trace(use_stack: RunningStack, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with open(path, "w") as f, client.profile(file=f) as prof:
        with session.create(small_cnn(), device=DEVICE) as sess:
            with prof.record("inf"):
                for _ in range(2):
                    sess.run(x)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]

    # one track group per process, named after the process
    labels = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    pid_of: dict[str, int] = {}
    for pid, name in labels.items():
        label, _, rest = name.partition(" (")
        assert rest == f"{pid})", name
        pid_of[label] = pid
    assert {"client", "worker-0", "npu0"} <= set(pid_of), labels
    assert len({e["pid"] for e in spans}) >= 3
    assert {pid_of["client"], pid_of["worker-0"], pid_of["npu0"]} <= {e["pid"] for e in spans}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert DEVICE in threads.values(), threads

    by_id = {e["args"]["span_id"]: e for e in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    for e in spans:
        parent = e["args"].get("parent_id")
        if parent is not None:
            assert parent in by_id, f"{e['name']}: parent {parent} is not in the trace"
            assert by_id[parent]["args"]["trace_id"] == e["args"]["trace_id"], e["name"]

    def children(of: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in spans if e["args"].get("parent_id") == of["args"]["span_id"]
                and (name is None or e["name"] == name)]

    users = [e for e in spans if e["name"] == "inf"]
    assert len(users) == 1
    user = users[0]
    assert user["pid"] == pid_of["client"] and user["args"].get("user") is True
    inferences = [e for e in spans if e["name"] == "Inference"]
    assert len(inferences) == 2
    assert {e["args"]["span_id"] for e in children(user, "Inference")} == \
        {e["args"]["span_id"] for e in inferences}, "the user span is the parent of both requests"
    for inf in inferences:
        tid = inf["args"]["trace_id"]
        assert inf["pid"] == pid_of["client"]
        assert tid == user["args"]["trace_id"]
        (job,) = children(inf, "worker.job")
        assert job["pid"] == pid_of["worker-0"] and job["args"]["trace_id"] == tid
        cpu = {e["name"] for e in children(job) if e["name"].startswith("cpu.")}
        assert cpu >= set(CPU_OPS)
        (npu,) = children(job, "npu.job")
        assert npu["pid"] == pid_of["npu0"] and npu["args"]["trace_id"] == tid
        assert sorted(e["name"] for e in children(npu)) == sorted(NPU_STAGES)
        for e in [npu, *children(npu)]:
            assert e["pid"] == pid_of["npu0"]
            assert threads[(e["pid"], e["tid"])] == DEVICE, e["name"]
            assert e["args"]["trace_id"] == tid

    # flow arrows from the client to the worker and from the worker to the device
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and set(starts) == set(finishes)
    hops = {(starts[i]["pid"], finishes[i]["pid"]) for i in starts}
    assert (pid_of["client"], pid_of["worker-0"]) in hops
    assert (pid_of["worker-0"], pid_of["npu0"]) in hops

    table = {r["name"]: r for r in prof.operator_table()}
    assert table["cpu.Quantize"]["count"] == 2 and table["cpu.Quantize"]["where"] == "CPU"
    assert table["npu.exec"]["count"] == 2 and table["npu.exec"]["where"] == "NPU"
    assert table["Inference"]["count"] == 2


# -- test C: untraced requests cost nothing ------------------------------------------------


@pytest.mark.timeout(60)
def test_untraced_run_sends_no_traceparent(use_stack: RunningStack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing.active(), "precondition: this process has no OTLP exporter and no profiler"
    injected: list[str | None] = []
    delivered: list[int] = []
    real_inject, real_deliver = tracing.inject, _profiler.deliver

    def spy_inject(*a: Any, **kw: Any) -> str | None:
        tp = real_inject(*a, **kw)
        injected.append(tp)
        return tp

    def spy_deliver(records: list[dict[str, Any]]) -> None:
        if records:
            delivered.append(len(records))
        real_deliver(records)

    monkeypatch.setattr(tracing, "inject", spy_inject)
    monkeypatch.setattr(_profiler, "deliver", spy_deliver)
    x = np.zeros((1, 3, 64, 64), np.float32)
    with session.create(small_cnn(), device=DEVICE) as sess:
        for _ in range(3):
            sess.run(x)
        assert injected == [], "an untraced run() must not make a traceparent"
        assert delivered == [], "an untraced run() must not bring spans back"
        with client.profile() as late:
            pass
        assert late.records() == []
        # control: the same session is traced while a profiler is active
        with client.profile() as prof:
            sess.run(x)
    assert injected and all(injected)
    names = {r["name"] for r in prof.records()}
    assert {"Inference", "worker.job", "npu.job", "npu.exec"} <= names
