"""Failure modes across process boundaries: dead daemons, dead workers, dead clients, busy devices.

Every test that needs requests long enough to kill something in flight runs a private stack
whose daemon stretches emulated time (``--time-scale``); nothing here leaves a process behind.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npusim.client import session
from npusim.services.errors import (
    DeviceBusy,
    DeviceError,
    DeviceNotFound,
    DeviceUnavailable,
    NpusimError,
    SessionClosed,
    WorkerCrashed,
)
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, start_stack
from tests.helpers import alive as _alive
from tests.helpers import wait_until as _wait_until

REPO = Path(__file__).resolve().parents[2]
SLOW_SCALE = "100000"  # small_cnn: ~7 µs emulated at scale 1 -> ~0.7 s per request
MIN_SLOW_NS = 300_000_000
X = np.zeros((1, 3, 64, 64), np.float32)


# -- helpers -----------------------------------------------------------------------------
def _kill_pids(pids: list[int]) -> None:
    """Last-resort cleanup of processes this test caused to exist."""
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _set_env(monkeypatch: pytest.MonkeyPatch, stack: RunningStack) -> None:
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)


def _daemon_stats(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, name="daemon", timeout_s=5.0) as peer:
        return peer.request(Kind.STATS).body["stats"]


def _daemon_health(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, name="daemon", timeout_s=5.0) as peer:
        return peer.request(Kind.HEALTH).body


def _outstanding(endpoint: str) -> int:
    return sum(s["outstanding"] for s in _daemon_stats(endpoint)["sessions"].values())


class _Runner:
    """``sess.run`` in a thread; records the outcome and when it happened."""

    def __init__(self, sess: session.Session) -> None:
        self.sess = sess
        self.result: Any = None
        self.exc: BaseException | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="run-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.sess.run(X)
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            self.exc = e
        finally:
            self.finished_at = time.monotonic()

    def start(self) -> _Runner:
        self.thread.start()
        return self


def _start_request_in_flight(sess: session.Session, daemon_endpoint: str) -> _Runner:
    """Start a run in a thread and return once the daemon holds it (queued or executing)."""
    runner = _Runner(sess).start()
    assert _wait_until(lambda: _outstanding(daemon_endpoint) >= 1 or not runner.thread.is_alive(), 10.0), \
        "the request never reached the daemon"
    assert runner.thread.is_alive(), f"the request finished before it could be interrupted: {runner.exc!r}"
    return runner


def _timed(fn: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    t0 = time.monotonic()
    try:
        return fn(), None, time.monotonic() - t0
    except BaseException as e:  # noqa: BLE001
        return None, e, time.monotonic() - t0


def _line_reader(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _next_line(q: queue.Queue[str | None], prefix: str, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while True:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{what}: no line starting with {prefix!r} within {timeout_s} s; got {seen}") \
                from None
        if line is None:
            raise AssertionError(f"{what}: exited before printing {prefix!r}; output {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return line


def _client_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture(scope="module")
def slow_stack() -> Iterator[RunningStack]:
    """One device whose jobs last ~0.6 s, shared by the worker-crash tests."""
    with start_stack(devices=1, daemon_args=("--time-scale", SLOW_SCALE)) as s:
        yield s


# -- 1. the daemon dies mid-request -------------------------------------------------------
@pytest.mark.timeout(120)
def test_daemon_killed_mid_run_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    with start_stack(devices=1, daemon_args=("--time-scale", SLOW_SCALE)) as stack:
        _set_env(monkeypatch, stack)
        daemon = stack.child("npu0")
        sess = session.create(small_cnn())
        spawned = list(sess._pool.pids()) if sess._pool else []
        try:
            sess.run(X)
            assert sess.last_timing["emulated_ns"] >= MIN_SLOW_NS, sess.last_timing

            runner = _start_request_in_flight(sess, daemon.endpoint)
            os.kill(daemon.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            daemon.proc.wait(5)
            runner.thread.join(15)
            assert not runner.thread.is_alive(), "run() still blocked 15 s after its daemon died"
            assert runner.finished_at is not None
            took = runner.finished_at - killed_at
            assert took < 5.0, f"run() took {took:.1f} s to notice its daemon died (timeout is {sess.timeout_s} s)"
            exc = runner.exc
            assert isinstance(exc, DeviceUnavailable), f"expected DeviceUnavailable, got {exc!r}"
            assert isinstance(exc, DeviceError)
            msg = str(exc)
            assert "npu0" in msg and daemon.endpoint in msg, msg

            # Later calls fail promptly and clearly: no hang until the 30 s timeout.
            for _ in range(3):
                _, exc2, took2 = _timed(lambda: sess.run(X))
                assert isinstance(exc2, NpusimError), f"run() after the daemon died returned/raised {exc2!r}"
                assert isinstance(exc2, (DeviceError, SessionClosed)), repr(exc2)
                assert str(exc2), "the error has no message"
                assert took2 < 5.0, f"run() after the daemon died took {took2:.1f} s"

            _, exc3, took3 = _timed(sess.close)
            assert exc3 is None, repr(exc3)
            assert took3 < 5.0, f"close() took {took3:.1f} s after the daemon died"
            assert _wait_until(lambda: not any(_alive(p) for p in spawned), 5.0), \
                f"workers still alive after close: {[p for p in spawned if _alive(p)]}"
        finally:
            sess.close()
            _kill_pids(spawned)


# -- 2. a worker process dies --------------------------------------------------------------
@pytest.mark.timeout(120)
def test_worker_killed_while_idle_is_replaced(slow_stack: RunningStack, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, slow_stack)
    sess = session.create(small_cnn())
    assert sess._pool is not None
    spawned = list(sess._pool.pids())
    try:
        sess.run(X)
        victim = sess._pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert _wait_until(lambda: not _alive(victim), 5.0)
        time.sleep(0.3)  # let the pool's socket see the disconnect too

        outcomes: list[str] = []
        for _ in range(2):
            _, exc, took = _timed(lambda: sess.run(X))
            spawned += [p for p in sess._pool.pids() if p not in spawned]
            assert took < 15.0, f"run() after a worker crash took {took:.1f} s"
            if exc is None:
                outcomes.append("ok")
                break
            assert isinstance(exc, WorkerCrashed), f"expected success or WorkerCrashed, got {exc!r}"
            outcomes.append("crashed")
        assert outcomes[-1] == "ok", f"no run succeeded within 2 attempts after a worker crash: {outcomes}"
        assert victim not in sess._pool.pids(), "the dead worker was not replaced"
    finally:
        spawned += [p for p in (sess._pool.pids() if sess._pool else []) if p not in spawned]
        sess.close()
        _kill_pids(spawned)


@pytest.mark.timeout(120)
def test_worker_killed_during_request_raises_worker_crashed(slow_stack: RunningStack,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, slow_stack)
    daemon_ep = slow_stack.daemons["npu0"]
    sess = session.create(small_cnn())
    assert sess._pool is not None
    spawned = list(sess._pool.pids())
    try:
        sess.run(X)
        assert sess.last_timing["emulated_ns"] >= MIN_SLOW_NS, sess.last_timing
        _wait_until(lambda: _outstanding(daemon_ep) == 0, 5.0)

        runner = _start_request_in_flight(sess, daemon_ep)
        victim = sess._pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        runner.thread.join(15)
        assert not runner.thread.is_alive(), "run() still blocked 15 s after its worker died"
        assert runner.finished_at is not None
        took = runner.finished_at - killed_at
        assert isinstance(runner.exc, WorkerCrashed), f"expected WorkerCrashed, got {runner.exc!r}"
        assert took < 3.0, f"WorkerCrashed took {took:.1f} s"
        assert "worker" in str(runner.exc)

        # The pool replaced the worker: the session keeps working.
        spawned += [p for p in sess._pool.pids() if p not in spawned]
        ok = False
        for _ in range(2):
            _, exc, _took = _timed(lambda: sess.run(X))
            if exc is None:
                ok = True
                break
            assert isinstance(exc, WorkerCrashed), repr(exc)
        assert ok, "the session did not recover after a worker crash"
    finally:
        spawned += [p for p in (sess._pool.pids() if sess._pool else []) if p not in spawned]
        sess.close()
        _kill_pids(spawned)


# -- 3. exclusive devices --------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_device_exclusivity_across_sessions(use_stack: RunningStack) -> None:
    assert not issubclass(DeviceBusy, DeviceNotFound) and not issubclass(DeviceNotFound, DeviceBusy)
    assert DeviceBusy is not DeviceNotFound
    model = small_cnn()
    opened: list[session.Session] = []
    try:
        opened.append(session.create(model))
        opened.append(session.create(model))
        assert sorted(s.device for s in opened) == ["npu0pe0-1", "npu1pe0-1"]

        with pytest.raises(DeviceBusy) as busy:
            opened.append(session.create(model))
        assert isinstance(busy.value, DeviceError)
        assert not isinstance(busy.value, DeviceNotFound)

        with pytest.raises(DeviceBusy) as busy_pe:
            opened.append(session.create(model, device="npu0pe0"))
        assert isinstance(busy_pe.value, DeviceError)
        assert "npu0pe0" in str(busy_pe.value)

        with pytest.raises(DeviceNotFound) as missing:
            opened.append(session.create(model, device="npu7pe0"))
        assert isinstance(missing.value, DeviceError)
        assert not isinstance(missing.value, DeviceBusy)
        assert "npu7" in str(missing.value)

        # Releasing one device makes it available again.
        first = next(s for s in opened if s.device == "npu0pe0-1")
        first.close()
        with session.create(model, device="npu0pe0") as single:
            assert single.device == "npu0pe0"
            assert single.program.target == "warboy"
            (y,) = single.run(X)
            assert y.shape == (1, 10)
    finally:
        for s in opened:
            s.close()


# -- 4. a client that dies releases its device ------------------------------------------------
_HOLDER = """
import sys, time
from npusim.client import session
from npusim.services.zoo import small_cnn
s = session.create(small_cnn(), device="npu0pe0-1")
print("opened", s.device, s._pool._dir, flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_device_released_when_client_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    with start_stack(devices=1) as stack:
        _set_env(monkeypatch, stack)
        daemon_ep = stack.daemons["npu0"]
        pool_dir = ""
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER], cwd=REPO, env=_client_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            lines = _line_reader(proc)
            line = _next_line(lines, "opened", 60.0, "the holder client")
            _, device, pool_dir = line.split()
            assert device == "npu0pe0-1"
            pes = _daemon_health(daemon_ep)["pes"]
            assert not pes["pe0-1"]["available"] and pes["pe0-1"]["client_pid"] == proc.pid

            proc.kill()
            killed_at = time.monotonic()
            proc.wait(10)
            freed = _wait_until(lambda: _daemon_health(daemon_ep)["pes"]["pe0-1"]["available"], 8.0, 0.1)
            took = time.monotonic() - killed_at
            assert freed and took < 6.0, f"npu0pe0-1 still held {took:.1f} s after its client was killed"

            with session.create(small_cnn(), device="npu0pe0-1") as sess:
                assert sess.device == "npu0pe0-1"
                sess.run(X)
            why = [r["why"] for r in _daemon_stats(daemon_ep)["released"]]
            assert any(str(proc.pid) in w or "heartbeat" in w for w in why), why
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if pool_dir:  # a SIGKILLed client cannot remove its worker socket directory
                shutil.rmtree(pool_dir, ignore_errors=True)


# -- 5. the embedded stack ---------------------------------------------------------------------
_EMBEDDED = """
import json, sys, time
import numpy as np
from npusim.client import _stack, session
from npusim.services.zoo import small_cnn
s = session.create(small_cnn())
(y,) = s.run(np.zeros((1, 3, 64, 64), np.float32))
assert y.shape == (1, 10)
info = {"embedded": _stack.embedded_pids(), "workers": s._pool.pids(), "tmp": _stack._tmp,
        "pool_dir": s._pool._dir, "source": _stack._embedded.source}
print("PIDS " + json.dumps(info), flush=True)
if sys.argv[1] == "sleep":
    time.sleep(120)
"""


@pytest.fixture
def empty_run_dir(ipc_dir: Path) -> Path:
    return ipc_dir


def _embedded_env(run_dir: Path) -> dict[str, str]:
    env = _client_env(NPUSIM_RUN_DIR=str(run_dir))
    for var in ("NPUSIM_COMPILER_ENDPOINT", "NPUSIM_DAEMON_ENDPOINTS", "NPUSIM_NO_EMBED", "NPUSIM_DEVICES"):
        env.pop(var, None)
    return env


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_embedded_stack_leaves_nothing_behind(empty_run_dir: Path, ending: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _EMBEDDED, "sleep" if ending == "sigkill" else "exit"],
                            cwd=REPO, env=_embedded_env(empty_run_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    tmp: str | None = None
    pool_dir: str | None = None
    try:
        lines = _line_reader(proc)
        info = json.loads(_next_line(lines, "PIDS ", 120.0, "the embedded client")[len("PIDS "):])
        pids = [*info["embedded"], *info["workers"]]
        tmp = info["tmp"]
        pool_dir = info["pool_dir"]
        assert info["source"] == "embedded"
        assert len(info["embedded"]) == 2 and len(info["workers"]) >= 1, info
        assert all(_alive(p) for p in pids), "embedded services or workers were not running"

        if ending == "sigkill":
            proc.kill()
        ended_at = time.monotonic()
        rc = proc.wait(30)
        stderr = proc.stderr.read() if proc.stderr else ""
        if ending == "exit":
            assert rc == 0, f"the client exited with {rc}: {stderr[-2000:]}"
        else:
            assert rc == -signal.SIGKILL
        gone = _wait_until(lambda: not any(_alive(p) for p in pids), 6.0, 0.1)
        left = [p for p in pids if _alive(p)]
        assert gone, f"still alive {time.monotonic() - ended_at:.1f} s after the client ended: {left} " \
                     f"(embedded {info['embedded']}, workers {info['workers']})"
        assert not list(empty_run_dir.glob("*.json")), "the embedded stack registered in the user's run dir"
        if ending == "exit":
            assert tmp is None or not Path(tmp).exists(), f"the embedded stack left {tmp} behind"
            assert not Path(pool_dir).exists(), f"the worker pool left {pool_dir} behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _kill_pids(pids)
        for d in (tmp, pool_dir):  # a SIGKILLed client cannot clean up after itself
            if d:
                shutil.rmtree(d, ignore_errors=True)


# -- 6. a closed session ------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_closed_session_refuses_work(use_stack: RunningStack) -> None:
    sess = session.create(small_cnn())
    try:
        sess.run(X)
    finally:
        assert sess.close() is True
    with pytest.raises(SessionClosed):
        sess.run(X)
    assert sess.close() is True  # closing twice is fine
    with pytest.raises(SessionClosed):
        sess.inputs()
    with pytest.raises(SessionClosed):
        sess.run(X)
