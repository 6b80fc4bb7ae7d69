"""Regression tests for the code-review findings fixed in "Review fixes: session lifetime, ...".

One test (or a small group) per reproduction script of the review. Loop-level behaviour is
tested against in-process services on a thread (ipc sockets in a short private temp dir);
session-level behaviour against the shared stack of ``tests/conftest.py``. Every test
cleans up the processes and threads it starts.
"""

from __future__ import annotations

import errno
import functools
import gc
import os
import shutil
import signal
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npusim.npu_daemon.server as daemon_server
from npusim.client import _heartbeat, session
from npusim.client import _engine as client_engine
from npusim.client import _session as client_session
from npusim.client._open import target_of
from npusim.client._workers import WorkerPool
from npusim.compiler_svc.cache import ProgramCache
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.compiler_svc.server import CompilerService
from npusim.npu_daemon.execute import Executor
from npusim.services.devices import parse_devices
from npusim.services.errors import (
    ConfigError,
    DeviceUnavailable,
    ProtocolError,
    ServiceError,
    SessionClosed,
    WorkerCrashed,
    from_wire,
)
from npusim.services.program import Program
from npusim.services.protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Kind, Message, decode
from npusim.services.rpc import Peer
from npusim.services.server import Request, Service
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, alive, serving, wait_until

X = np.zeros((1, 3, 64, 64), np.float32)
RELEASE_AFTER_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS  # a daemon releases a silent session after this


# -- helpers -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _program(target: str) -> bytes:
    program, _ = compile_model(small_cnn().SerializeToString(), CompileOptions(target_npu=target))
    return program.to_bytes()


def _open(peer: Peer, target: str = "warboy", pe: str = "pe0", name: str = "t") -> tuple[str, Program]:
    blob = _program(target)
    reply = peer.request(Kind.OPEN, {"pe": pe, "session": name}, [("program", np.frombuffer(blob, np.uint8))])
    assert reply.kind == Kind.OPENED
    return reply.body["handle"], Program.from_bytes(blob)


def _device_input(program: Program) -> list[tuple[str, np.ndarray]]:
    return [(s.name, np.zeros(s.shape, np.dtype(s.dtype))) for s in program.stages[0].device_inputs]


def _stats(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, timeout_s=5.0) as peer:
        return peer.request(Kind.STATS).body["stats"]


def _heartbeat_handles(endpoint: str) -> set[str]:
    with _heartbeat._lock:
        d = _heartbeat._daemons.get(endpoint)
        return set(d.sessions) if d is not None else set()


def _set_env(monkeypatch: pytest.MonkeyPatch, stack: RunningStack) -> None:
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)


# -- a_wake_fd: late cross-thread calls after the loop ended ------------------------------
@pytest.mark.timeout(20)
def test_reply_after_serve_forever_returned_is_dropped(ipc_dir: Path) -> None:
    svc = Service("t", f"ipc://{ipc_dir}/s.sock")
    wake_w = svc._wake_w
    with serving(svc):
        pass  # started, then stopped: serve_forever has returned and closed its wake pipe
    # Something else in the process opens files and gets the recycled descriptor numbers.
    fds: list[int] = []
    victim: Path | None = None
    try:
        while not fds or fds[-1] < wake_w:
            path = ipc_dir / f"f{len(fds)}"
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT))
            if fds[-1] == wake_w:
                victim = path
        ran: list[bool] = []
        errors: list[BaseException] = []

        def late() -> None:  # a compile / onnxruntime load finishing after the service stopped
            try:
                svc.reply(Request(b"peer", Message(Kind.HEALTH, 7), 0, []), Message(Kind.HEALTH_OK, 7))
                svc.call_soon_threadsafe(lambda: ran.append(True))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=late)
        t.start()
        t.join(5)
        assert not errors, errors
        assert not svc._outbox and not svc._calls, "a late reply/call was queued for a loop that is gone"
        assert not ran
        if victim is not None:  # another thread may have taken the number first; then nothing to read
            assert victim.read_bytes() == b"", "the late call wrote into a file that reused the wake fd"
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.timeout(20)
def test_stop_after_serve_forever_returned_writes_nothing(ipc_dir: Path) -> None:
    svc = Service("t", f"ipc://{ipc_dir}/s.sock")
    wake_w = svc._wake_w
    with serving(svc):
        pass
    fds: list[int] = []
    try:
        while not fds or fds[-1] < wake_w:
            fds.append(os.open(ipc_dir / f"f{len(fds)}", os.O_WRONLY | os.O_CREAT))
        if fds[-1] != wake_w:
            pytest.skip("another thread took the recycled descriptor number")
        svc.stop()
        assert (ipc_dir / f"f{len(fds) - 1}").read_bytes() == b""
    finally:
        for fd in fds:
            os.close(fd)


# -- b_loop_death: a reply that cannot be encoded ----------------------------------------
class _UnencodableStats(Service):
    """STATS answers with a numpy scalar in its body, inline or from a worker thread."""

    def __init__(self, *a: Any, threaded: bool, **k: Any) -> None:
        super().__init__(*a, **k)
        self.threaded = threaded
        self.handlers[Kind.STATS] = self._bad

    def _bad(self, req: Request) -> Message | None:
        reply = req.msg.reply(Kind.STATS_OK, {"stats": {"n": np.int64(1)}})
        if not self.threaded:
            return reply
        threading.Thread(target=self.reply, args=(req, reply)).start()
        return None


@pytest.mark.timeout(20)
@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "from-thread"])
def test_unencodable_reply_is_answered_and_loop_survives(ipc_dir: Path, threaded: bool) -> None:
    svc = _UnencodableStats("t", f"ipc://{ipc_dir}/s.sock", threaded=threaded)
    with serving(svc) as loop, Peer(svc.endpoint, timeout_s=3.0) as peer:
        with pytest.raises(ServiceError, match="could not encode"):
            peer.request(Kind.STATS)
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK
        assert loop.is_alive()
        with pytest.raises(ServiceError):  # and again: nothing is left broken
            peer.request(Kind.STATS)
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK


# -- c_slow_load: a program load longer than the heartbeat limit -------------------------
SLOW_LOAD_S = RELEASE_AFTER_S + 1.0


class _SlowLoadExecutor(Executor):
    """Stands in for a big model: onnxruntime session creation takes longer than 3 s."""

    def __init__(self, *a: Any, **k: Any) -> None:
        time.sleep(SLOW_LOAD_S)
        super().__init__(*a, **k)


@pytest.mark.timeout(30)
def test_slow_program_load_is_opened_not_released(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_server, "Executor", _SlowLoadExecutor)
    svc = daemon_server.DaemonService("npu0", f"ipc://{ipc_dir}/npu0.sock")
    with serving(svc), Peer(svc.endpoint, timeout_s=SLOW_LOAD_S + 10) as peer:
        t0 = time.monotonic()
        handle, program = _open(peer, name="slow")
        assert time.monotonic() - t0 >= SLOW_LOAD_S - 0.1  # the load really outlasted the heartbeat limit
        stats = peer.request(Kind.STATS).body["stats"]
        assert handle in stats["sessions"]
        assert stats["released"] == []
        result = peer.request(Kind.RUN, {"handle": handle}, _device_input(program))
        assert result.kind == Kind.RESULT
        assert len(result.tensors) == len(program.stages[0].device_outputs)
        peer.request(Kind.CLOSE, {"handle": handle})


# -- j_cancel: jobs queued when the session closes ---------------------------------------
class _SlowComputeExecutor(Executor):
    """Each job takes 0.3 s, so later RUNs are still queued when the CLOSE arrives."""

    def timed(self, stage: int, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        time.sleep(0.3)
        return super().timed(stage, inputs)


@pytest.mark.timeout(20)
def test_runs_queued_at_close_get_session_closed(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_server, "Executor", _SlowComputeExecutor)
    svc = daemon_server.DaemonService("npu0", f"ipc://{ipc_dir}/npu0.sock")
    with serving(svc), Peer(svc.endpoint, timeout_s=10.0) as peer:
        handle, program = _open(peer)
        runs = [peer.send(Kind.RUN, {"handle": handle}, _device_input(program)) for _ in range(4)]
        close = peer.send(Kind.CLOSE, {"handle": handle})
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + 10.0
        while len(replies) < 5:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {sorted(replies)} of {runs + [close]} were answered"
            if peer.sock.poll(int(remaining * 1000)):
                msg = decode(peer.sock.recv_multipart(copy=False))
                replies[msg.id] = msg
        assert replies[close].kind == Kind.CLOSED
        for rid in runs:
            msg = replies[rid]
            if rid == runs[0] and msg.kind == Kind.RESULT:
                continue  # the job already running may finish
            assert msg.kind == Kind.ERROR, msg
            err = from_wire(msg.body)
            assert isinstance(err, SessionClosed), (type(err).__name__, err.message)
            assert err.message


# -- l_oversize: requests above the message limit ----------------------------------------
LIMIT = 1 << 20


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", ["argument", "env"])
def test_oversize_request_fails_before_sending(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=ProgramCache(max_bytes=0),
                          max_message_bytes=LIMIT)
    if via == "env":
        monkeypatch.setenv("NPUSIM_MAX_MESSAGE_BYTES", str(LIMIT))
    big = np.zeros(3 * LIMIT, np.uint8)
    with serving(svc), Peer(svc.endpoint, timeout_s=3.0, watch_disconnect=True,
                            max_message_bytes=LIMIT if via == "argument" else None) as peer:
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match="NPUSIM_MAX_MESSAGE_BYTES") as ei:
            peer.request(Kind.COMPILE, {"options": {}}, [("model", big)])
        assert time.monotonic() - t0 < 1.0
        assert ei.value.details["limit"] == LIMIT and ei.value.details["size"] > LIMIT
        # Nothing was sent, so the connection is intact and the service never saw a COMPILE.
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK
        assert not peer.lost
        assert "COMPILE" not in peer.request(Kind.STATS).body["stats"]["by_kind"]


@pytest.mark.timeout(20)
def test_oversize_for_a_smaller_service_limit_is_named(ipc_dir: Path) -> None:
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=ProgramCache(max_bytes=0),
                          max_message_bytes=LIMIT)
    with serving(svc), Peer(svc.endpoint, timeout_s=3.0, watch_disconnect=True) as peer:
        with pytest.raises(ProtocolError, match="NPUSIM_MAX_MESSAGE_BYTES"):
            peer.request(Kind.COMPILE, {"options": {}}, [("model", np.zeros(3 * LIMIT, np.uint8))])


# -- i_cache_put: the program cache is best-effort ---------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("failure", ["enospc", "not-a-directory"])
def test_cache_write_failure_does_not_fail_compile(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   failure: str) -> None:
    cache_dir = ipc_dir / "cache"
    cache = ProgramCache(cache_dir, max_bytes=1 << 30)
    if failure == "enospc":
        def full(key: str, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(cache, "put", full)
    else:  # the directory vanished and a file took its place: every real write fails
        shutil.rmtree(cache_dir)
        cache_dir.write_bytes(b"")
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=cache)
    model = np.frombuffer(small_cnn().SerializeToString(), np.uint8)
    with serving(svc), Peer(svc.endpoint, timeout_s=30.0) as peer:
        for _ in range(2):
            reply = peer.request(Kind.COMPILE, {"options": {"target_npu": "warboy"}}, [("model", model)])
            assert reply.kind == Kind.COMPILED
            assert Program.from_bytes(reply.tensor("program").tobytes()).target == "warboy"
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK


@pytest.mark.timeout(10)
@pytest.mark.parametrize("via", ["argument", "env"])
def test_uncreatable_cache_dir_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    where = blocker / "cache"
    if via == "env":
        monkeypatch.setenv("NPUSIM_CACHE_DIR", str(where))
    with pytest.raises(ConfigError, match="NPUSIM_CACHE_DIR") as ei:
        ProgramCache(where if via == "argument" else None, max_bytes=1 << 20)
    assert str(where) in str(ei.value)


# -- f_silent_count: device strings a session cannot serve ------------------------------
# (Several PEs of one kind are served since the multi-device sessions; a mix of fused and
# single PEs, or a malformed string, is still refused before anything starts.)
@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["warboy(2)*1,npu1pe0", "npu0pe0,npu0pe0-1", "warboy(3)*1", "npu:0:1-0"])
@pytest.mark.parametrize("via", ["argument", "env"])
def test_unservable_device_is_refused_before_starting(monkeypatch: pytest.MonkeyPatch, device: str, via: str) -> None:
    def must_not_start(*a: Any, **k: Any) -> None:
        raise AssertionError("create() started something before refusing the device string")

    monkeypatch.setattr(client_engine, "get_stack", must_not_start)
    monkeypatch.setattr(client_engine, "WorkerPool", must_not_start)
    if via == "env":
        monkeypatch.setenv("NPUSIM_DEVICES", device)
    with pytest.raises(ConfigError) as ei:
        session.create(small_cnn(), device=device if via == "argument" else None)
    assert isinstance(ei.value, ValueError)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("device", ["warboy(2)*1", "warboy(1)*1", "warboy*1", "npu0pe1", "npu:1:0-1", "npu0"])
def test_single_pe_device_strings_are_still_accepted(device: str) -> None:
    specs = parse_devices(device)
    assert target_of(specs) == ("warboy-2pe" if specs[0].pe == "pe0-1" else "warboy")


# -- A13: the stored lost-session error ---------------------------------------------------
@pytest.mark.timeout(10)
def test_lost_session_error_is_raised_fresh_each_time() -> None:
    e = client_engine.Engine.__new__(client_engine.Engine)  # only what submit() looks at before the device
    e._closing = False
    lost = DeviceUnavailable("npu0 at ipc:///x stopped answering", details={"endpoint": "ipc:///x"})
    e.live = _heartbeat.Liveness(lost)
    raised = []
    for _ in range(5):
        with pytest.raises(DeviceUnavailable) as ei:
            e.submit([X])
        raised.append(ei.value)
    assert all(e is not lost for e in raised)
    assert len({id(e) for e in raised}) == len(raised)
    depths = [len(traceback.extract_tb(e.__traceback__)) for e in raised]
    assert depths == [depths[0]] * len(depths), depths
    assert lost.__traceback__ is None
    assert all(e.message == lost.message and e.details == lost.details for e in raised)


# -- d_late_heartbeat: the first beat goes right after OPEN ------------------------------
SLOW_SETUP_S = RELEASE_AFTER_S + 0.5


@pytest.mark.timeout(45)
def test_heartbeat_starts_right_after_open(use_stack: RunningStack, monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[bool] = []
    orig = WorkerPool.setup

    def slow_setup(self: WorkerPool, *a: Any, **k: Any) -> None:
        targets = a[2]
        registered.append(all(t.handle in _heartbeat_handles(t.daemon) for t in targets))
        time.sleep(SLOW_SETUP_S)  # workers that take long to start (many of them, a loaded machine)
        orig(self, *a, **k)

    monkeypatch.setattr(WorkerPool, "setup", slow_setup)
    s = session.create(small_cnn())
    try:
        opened = s._engine.opened[0]
        out = s.run(X)  # not released while the workers started
        assert out and out[0].size
        assert opened.handle in _stats(opened.endpoint)["sessions"]
        assert registered == [True], "the heartbeat did not know the session while its workers started"
    finally:
        s.close()


# -- e_no_gc: an unclosed session is collected and gives its PE back ---------------------
def _create_and_drop() -> tuple[weakref.ref[client_session.Session], list[int], str, str, str]:
    s = session.create(small_cnn())
    assert s._pool is not None
    opened = s._engine.opened[0]
    return weakref.ref(s), s._pool.pids(), s.device, opened.endpoint, opened.handle


@pytest.mark.timeout(45)
def test_unclosed_session_is_collected_and_frees_its_pe(use_stack: RunningStack) -> None:
    ref, pids, device, endpoint, handle = _create_and_drop()
    try:
        gc.collect()
        assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
        assert wait_until(lambda: not any(alive(p) for p in pids), 10.0), "the workers outlived their session"
        # the collector closes the session without waiting: the PE is given back just after the workers stop
        assert wait_until(lambda: handle not in _stats(endpoint)["sessions"], 10.0), "the PE was not given back"
        assert handle not in _heartbeat_handles(endpoint)
        with session.create(small_cnn(), device=device) as again:  # the same PE is free again
            assert again.device == device
            again.run(X)
    finally:
        leaked = ref()
        if leaked is not None:
            leaked.close()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


# -- g_hung_worker: a worker that stops answering is replaced ----------------------------
@pytest.mark.timeout(45)
def test_hung_worker_is_killed_and_replaced(use_stack: RunningStack) -> None:
    s = client_session.Session(small_cnn(), worker_num=2, timeout_s=2.0)
    stuck = None
    try:
        s.run(X)
        assert s._pool is not None
        stuck = s._pool.workers[0].proc  # an idle session hands its next job to the first idle worker
        stuck.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(WorkerCrashed):
            s.run(X)
        assert time.monotonic() - t0 < s.timeout_s + 5 + 3
        assert stuck.pid not in s._pool.pids()
        assert stuck.poll() is not None, "the hung worker was not killed"
        out = s.run(X)  # a later run goes to a worker that answers
        assert out and out[0].size
    finally:
        if stuck is not None and stuck.poll() is None:
            stuck.send_signal(signal.SIGCONT)
            stuck.kill()
            stuck.wait()
        s.close()


# -- h_dead_daemon: any-PE allocation skips a daemon that does not answer ----------------
@pytest.mark.timeout(30)
def test_default_device_skips_a_dead_daemon(stack: RunningStack, ipc_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, stack)
    monkeypatch.setenv("NPUSIM_DAEMON_ENDPOINTS", f"npu0=ipc://{ipc_dir}/gone.sock,npu1={stack.daemons['npu0']}")
    s = client_session.Session(small_cnn(), timeout_s=1.0)
    try:
        assert s.device == "npu1pe0-1"
        out = s.run(X)
        assert out and out[0].size
    finally:
        s.close()
