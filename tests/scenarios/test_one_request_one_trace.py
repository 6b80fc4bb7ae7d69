"""Scenario S10, one trace: "one request is one connected trace across client, workers, compiler
and daemon, viewable in Jaeger and as a Chrome/Perfetto trace file."

One client process (its own Python, so its tracer provider is configured from the environment
with OTLP export, as a user's would be) does one request inside a profiler's user span::

    with open(path, "w") as f, profile(file=f) as prof:
        with prof.record("request"):
            with session.create(model, device="npu0pe0-1") as sess:   # compiles: compiler spans
                sess.run(x)                                             # worker + daemon spans

against a private stack (compiler + one daemon) whose services, like the client and its
worker, export OTLP/HTTP to a receiver this test runs on 127.0.0.1 — the wire format Jaeger's
collector takes (there is no Jaeger binary here; ``tests/integration/test_tracing.py``'s receiver
decodes the same ``ExportTraceServiceRequest`` Jaeger would). The test then checks the Jaeger
view (every span in one trace, the parent links one tree rooted at the user's span, spans from
all four kinds of process) and the Chrome trace the profiler wrote for the same run (valid JSON,
one pid group per process, the very same spans).

``tests/integration/test_tracing.py`` checks the pieces (per-request traces across client,
worker and daemon, the compile as a child of ``session.create``, the Chrome file of two
requests); this scenario checks that they join into one trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_tracing import OtlpReceiver, Span, run_traced_client

pytestmark = pytest.mark.timeout(90)

SERVICES = {"npusim-client", "npusim-worker", "npusim-compiler", "npusim-daemon"}
# the spans one request must have, and the service that makes each (docs/tracing.md)
EXPECTED = {"request": "npusim-client", "session.create": "npusim-client", "compile": "npusim-compiler",
            "Inference": "npusim-client", "worker.job": "npusim-worker", "cpu.Quantize": "npusim-worker",
            "npu.job": "npusim-daemon", "npu.exec": "npusim-daemon"}

CLIENT = """
import sys
import numpy as np
from npusim.client import profile, session
from npusim.services.zoo import small_cnn

x = np.random.default_rng(10).standard_normal((1, 3, 64, 64)).astype(np.float32)
with open(sys.argv[1], "w") as f, profile(file=f) as prof:
    with prof.record("request"):
        with session.create(small_cnn(), device="npu0pe0-1") as sess:
            (y,) = sess.run(x)
assert y.shape == (1, 10), y.shape
print("client done")
"""


def _complete(spans: list[Span]) -> bool:
    """Everything the request makes has arrived: each expected span, and the daemon's stages."""
    names = {s.name for s in spans}
    return set(EXPECTED) <= names and {"npu.queue", "npu.h2d", "npu.d2h"} <= names


@pytest.fixture(scope="module")
def one_request(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Span], dict[str, Any]]]:
    """The OTLP spans and the Chrome trace of one traced request (compile included).

    Module-scoped, so it sets its own environment (the autouse ``_isolated_env`` is per test).
    """
    receiver = OtlpReceiver()
    base = tmp_path_factory.mktemp("s10")
    trace_file = base / "trace.json"
    try:
        run_traced_client(receiver, base, "s10", CLIENT, str(trace_file))
        doc = json.loads(trace_file.read_text())
        # wait for every span the profiler saw: exports are batched, so a late one would look missing
        in_file = {e["args"]["span_id"] for e in doc.get("traceEvents", []) if e.get("ph") == "X"}
        spans = receiver.wait_for(lambda got: _complete(got) and in_file <= {s.span_id for s in got},
                                  timeout_s=15.0)
        assert not receiver.errors, f"the receiver could not decode exports: {receiver.errors}"
        assert _complete(spans), f"spans missing after 15 s: got {sorted(s.name for s in spans)}"
        # an exporter that retried a batch the receiver had taken sends its spans twice: one each
        yield list({s.span_id: s for s in reversed(spans)}.values())[::-1], doc
    finally:
        receiver.close()


def test_one_request_is_one_connected_trace(one_request: tuple[list[Span], dict[str, Any]]) -> None:
    spans, _ = one_request
    assert {s.trace_id for s in spans} == {spans[0].trace_id}, (
        "every span of the request shares one trace id: "
        f"{sorted({(s.trace_id[:8], s.service, s.name) for s in spans})}")
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert [(r.name, r.service) for r in roots] == [("request", "npusim-client")], "one root: the user's span"
    orphans = [(s.service, s.name) for s in spans if s.parent_id is not None and s.parent_id not in ids]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    # and every span reaches the root through its parents (no cycles, one tree)
    parent = {s.span_id: s.parent_id for s in spans}
    root = roots[0].span_id
    for s in spans:
        seen, cur = set(), s.span_id
        while cur != root:
            assert cur not in seen, f"a parent cycle through {s.name}"
            seen.add(cur)
            cur = parent[cur]  # type: ignore[assignment]

    assert {s.service for s in spans} == SERVICES, sorted({s.service for s in spans})
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    for name, service in EXPECTED.items():
        assert [s.service for s in by_name[name]] == [service], (name, [s.service for s in by_name[name]])
    span = {name: by_name[name][0] for name in EXPECTED}
    # the path of the request through the processes
    for child, par in (("session.create", "request"), ("compile", "session.create"), ("Inference", "request"),
                       ("worker.job", "Inference"), ("cpu.Quantize", "worker.job"), ("npu.job", "worker.job"),
                       ("npu.exec", "npu.job")):
        assert span[child].parent_id == span[par].span_id, f"{child} is not a child of {par}"
    for s in spans:
        if s.name.startswith("compile."):
            assert s.service == "npusim-compiler" and s.parent_id == span["compile"].span_id, s.name


def test_chrome_trace_of_the_same_request(one_request: tuple[list[Span], dict[str, Any]]) -> None:
    spans, doc = one_request
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    json.dumps(doc)  # plain JSON all the way down
    for e in events:
        assert e["ph"] in ("M", "X", "s", "f"), e
        assert isinstance(e["pid"], int)
    xs = [e for e in events if e["ph"] == "X"]
    for e in xs:
        assert isinstance(e["name"], str) and e["ts"] >= 0 and e["dur"] >= 0, e
        assert isinstance(e["tid"], int), e

    # one pid group per process, named after it
    labels = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    pid_of: dict[str, int] = {}
    for pid, name in labels.items():
        label, _, rest = name.partition(" (")
        assert rest == f"{pid})", name
        pid_of[label] = pid
    assert {"client", "worker-0", "npu0", "compiler"} <= set(pid_of), labels
    assert len({pid_of[p] for p in ("client", "worker-0", "npu0", "compiler")}) == 4, "separate processes"
    assert {e["pid"] for e in xs} <= set(labels), "every span is in a named process group"
    where = {"npusim-client": "client", "npusim-worker": "worker-0", "npusim-daemon": "npu0",
             "npusim-compiler": "compiler"}

    # the very same spans as Jaeger got: ids, trace, parents, and the process each ran in
    chrome = {e["args"]["span_id"]: e for e in xs}
    assert len(chrome) == len(xs), "span ids are unique"
    otlp = {s.span_id: s for s in spans}
    assert set(chrome) == set(otlp), (sorted(e["name"] for e in xs), sorted(s.name for s in spans))
    for sid, e in chrome.items():
        s = otlp[sid]
        assert e["name"] == s.name
        assert e["args"]["trace_id"] == s.trace_id
        assert e["args"].get("parent_id") == s.parent_id, e["name"]
        assert e["pid"] == pid_of[where[s.service]], (e["name"], s.service, labels[e["pid"]])

    # flow arrows carry the request from process to process
    starts = {e["id"]: e["pid"] for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e["pid"] for e in events if e["ph"] == "f"}
    assert set(starts) == set(finishes)
    hops = {(starts[i], finishes[i]) for i in starts}
    for a, b in (("client", "compiler"), ("client", "worker-0"), ("worker-0", "npu0")):
        assert (pid_of[a], pid_of[b]) in hops, f"no flow arrow from {a} to {b}: {hops}"
