"""Routed RUNs: a timing-only session's repeated request, answered by the daemon through the
serving loop's compiled lane without decoding it (npu_daemon/server.py, services/_lane.c).

A routed job must be indistinguishable from one that took the full decode → handler → encode
path: the same checks (queue limit, closed session), the same schedule and counters, a RESULT
that is exactly what ``encode`` writes, and one answer per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from npu_daemon.server import ROUTES_PER_SESSION, DaemonOptions, DaemonService
from services import lane
from services.errors import QueueFull, SessionClosed
from services.program import NpuStage, NpuStep, Program, TensorSpec
from services.protocol import Kind, Message, decode, encode
from services.rpc import Peer
from services.zoo import identity
from tests.helpers import serving, short_dir

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(lane.available() is not None, reason=f"no lane here: {lane.available()}")]

SHAPE = (1, 64)
X = np.zeros(SHAPE, np.uint8)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def program(npu_ns: float = 0.0) -> np.ndarray:
    spec = TensorSpec("input", "uint8", SHAPE, "NC")
    out = TensorSpec("output", "uint8", SHAPE, "NC")
    stage = NpuStage(identity(list(SHAPE)).SerializeToString(), [spec], [out], [spec], [out],
                     estimate={"npu_ns": npu_ns, "npu_ns_shared": npu_ns, "job_overhead_ns": 0.0})
    p = Program(target="warboy", batch_size=1, inputs=[spec], outputs=[out], steps=[NpuStep(0, ["input"], ["output"])],
                stages=[stage], meta={"model": "tiny"})
    return np.frombuffer(p.to_bytes(), np.uint8)


class Daemon:
    def __init__(self, svc: DaemonService, endpoint: str) -> None:
        self.svc, self.endpoint = svc, endpoint
        self.ctx = zmq.Context()
        self.peer = Peer(endpoint, name="npu9", ctx=self.ctx, timeout_s=10)

    def open(self, npu_ns: float = 0.0) -> str:
        reply = self.peer.request(Kind.OPEN, {"pe": "pe0", "session": "s", "client_pid": None},
                                  [("program", program(npu_ns))])
        return str(reply.body["handle"])

    def burst(self, messages: list[Message]) -> dict[int, Message]:
        """Send every message at once over a fresh DEALER; each reply by id, checked canonical."""
        with self.ctx.socket(zmq.DEALER) as s:
            s.connect(self.endpoint)
            for m in messages:
                s.send_multipart(encode(m))
            replies: dict[int, Message] = {}
            while len(replies) < len(messages):
                assert s.poll(10_000), f"{len(messages) - len(replies)} requests never answered"
                raw = [bytes(f) for f in s.recv_multipart()]
                msg = decode(raw)
                assert [bytes(memoryview(f)) for f in encode(msg)] == raw, "a reply encode() would not write"
                assert msg.id not in replies, f"request {msg.id} answered twice"
                replies[msg.id] = msg
            assert not s.poll(100), "an extra reply"
        return replies

    def close(self) -> None:
        self.peer.close()
        self.ctx.term()


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    opts: dict[str, Any] = {"timing_only": True, **getattr(request, "param", {})}
    with short_dir() as d:
        endpoint = f"ipc://{d}/npu9.sock"
        svc = DaemonService("npu9", endpoint, options=DaemonOptions(**opts))
        with serving(svc):
            dm = Daemon(svc, endpoint)
            try:
                yield dm
            finally:
                dm.close()


def run(handle: str, rid: int, tp: str | None = None) -> Message:
    return Message(Kind.RUN, rid, {"handle": handle, "stage": 0}, [("input", X)], tp)


def test_a_repeated_run_is_routed_and_answered_like_the_first(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    h = daemon.open()
    first = daemon.burst([run(h, 1)])[1]
    assert len(daemon.svc.routes) == 1
    routed: list[int] = []
    handle = daemon.svc._routed
    monkeypatch.setattr(daemon.svc, "_routed", lambda route, rid, *a: (routed.append(rid), handle(route, rid, *a)))
    stats0 = daemon.peer.request(Kind.STATS).body["stats"]
    replies = daemon.burst([run(h, i) for i in range(2, 202)])
    for r in [first, *replies.values()]:
        assert r.kind == Kind.RESULT
        assert [(n, a.dtype, a.shape) for n, a in r.tensors] == [("output", np.dtype(np.uint8), SHAPE)]
        assert not r.tensors[0][1].any()
        assert r.body["timing"].keys() == first.body["timing"].keys()
        assert r.body["timing"]["zero_filled"] is True and r.body["timing"]["stage"] == 0
    assert sorted(routed) == list(range(2, 202))  # not one of them took the full path
    stats1 = daemon.peer.request(Kind.STATS).body["stats"]
    assert stats1["received"] - stats0["received"] == 201  # the 200 RUNs and the STATS itself
    assert stats1["replied"] - stats0["replied"] == 201
    assert stats1["by_kind"]["RUN"] - stats0["by_kind"]["RUN"] == 200
    session = stats1["sessions"][h]
    assert session["jobs"] == 201 and session["outstanding"] == 0
    assert stats1["counters"]["pe0"]["jobs"] == 201


def test_routed_jobs_take_their_emulated_time(daemon: Daemon) -> None:
    h = daemon.open(npu_ns=20e6)  # 20 ms a job
    first = daemon.burst([run(h, 1)])[1]
    t0 = time.monotonic()
    second = daemon.burst([run(h, 2)])[2]
    assert time.monotonic() - t0 >= 0.019
    assert second.body["timing"]["emulated_ns"] == first.body["timing"]["emulated_ns"] >= 20e6
    replies = daemon.burst([run(h, i) for i in range(3, 6)])  # queued behind each other, FIFO
    ends = [replies[i].body["timing"]["end_ns"] for i in range(3, 6)]
    assert ends == sorted(ends) and ends[2] - ends[0] >= 40e6


@pytest.mark.parametrize("daemon", [{"queue_limit": 4}], indirect=True)
def test_routed_runs_keep_the_queue_limit(daemon: Daemon) -> None:
    h = daemon.open(npu_ns=200e6)  # each job holds the PE for 0.2 s: the burst outruns it
    daemon.burst([run(h, 1)])
    replies = daemon.burst([run(h, i) for i in range(2, 12)])
    kinds = [replies[i].kind for i in range(2, 12)]
    assert kinds == [Kind.RESULT] * 4 + [Kind.ERROR] * 6
    assert all(replies[i].body["code"] == QueueFull.code for i in range(6, 12))


def test_routes_per_session_are_bounded_and_share_their_outputs(daemon: Daemon) -> None:
    h = daemon.open()
    # unknown body fields are allowed, so each of these is a header of its own
    replies = daemon.burst([Message(Kind.RUN, i, {"handle": h, "stage": 0, f"x{i}": 0}, [("input", X)])
                            for i in range(1, 41)])
    assert {r.kind for r in replies.values()} == {Kind.RESULT}
    session = daemon.svc.sessions[h]
    assert len(daemon.svc.routes) == len(session.routes) == ROUTES_PER_SESSION
    assert len(session.replies) == 1  # one set of prepared outputs for the stage


def test_a_routed_run_that_fails_is_answered(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    h = daemon.open()
    daemon.burst([run(h, 1)])
    before = daemon.svc.stats.handler_errors
    monkeypatch.setattr(daemon.svc.clock, "schedule", lambda *a: 1 / 0)
    replies = daemon.burst([run(h, 2), run(h, 3)])
    assert [replies[i].kind for i in (2, 3)] == [Kind.ERROR, Kind.ERROR]
    assert "ZeroDivisionError" in replies[2].body["message"]
    assert daemon.svc.stats.handler_errors - before == 2
    assert daemon.svc.sessions[h].outstanding == 0


def test_a_closed_sessions_runs_are_refused_not_routed(daemon: Daemon) -> None:
    h = daemon.open()
    daemon.burst([run(h, 1), run(h, 2)])
    assert daemon.svc.routes
    daemon.peer.request(Kind.CLOSE, {"handle": h})
    assert not daemon.svc.routes
    reply = daemon.burst([run(h, 3)])[3]
    assert reply.kind == Kind.ERROR and reply.body["code"] == SessionClosed.code


def test_traced_runs_take_the_full_path(daemon: Daemon) -> None:
    h = daemon.open()
    daemon.burst([run(h, 1)])
    replies = daemon.burst([run(h, 2, TRACEPARENT), run(h, 3)])
    assert "spans" in replies[2].body and "spans" not in replies[3].body
    assert len(daemon.svc.routes) == 1


def test_a_wrong_size_frame_under_a_routed_header_is_refused(daemon: Daemon) -> None:
    h = daemon.open()
    daemon.burst([run(h, 1)])
    with daemon.ctx.socket(zmq.DEALER) as s:
        s.connect(daemon.endpoint)
        header = bytes(memoryview(encode(run(h, 2))[0]))
        s.send_multipart([header, bytes(63)])
        assert s.poll(10_000)
        reply = decode(s.recv_multipart())
    assert reply.kind == Kind.ERROR and "needs 64 bytes but its frame has 63" in reply.body["message"]


@pytest.mark.parametrize("daemon", [{"timing_only": False}], indirect=True)
def test_functional_sessions_are_never_routed(daemon: Daemon) -> None:
    h = daemon.open()
    x = np.arange(64, dtype=np.uint8).reshape(SHAPE)
    for i in range(3):
        reply = daemon.peer.request(Kind.RUN, {"handle": h, "stage": 0}, [("input", x)])
        np.testing.assert_array_equal(reply.tensors[0][1], x)
    assert not daemon.svc.routes


def test_without_a_lane_nothing_is_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lane.ENV_LANE, "0")
    with short_dir() as d:
        endpoint = f"ipc://{d}/npu9.sock"
        svc = DaemonService("npu9", endpoint, options=DaemonOptions(timing_only=True))
        with serving(svc):
            dm = Daemon(svc, endpoint)
            try:
                h = dm.open()
                replies = dm.burst([run(h, i) for i in range(1, 51)])
                assert {r.kind for r in replies.values()} == {Kind.RESULT}
                assert svc.lane is None and not svc.routes
            finally:
                dm.close()
