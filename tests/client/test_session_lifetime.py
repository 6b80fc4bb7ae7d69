"""A client session's lifetime: the error of a lost device is raised fresh each time (no
traceback piling up on a stored exception), the heartbeat knows a session from its OPEN on
(so slow-starting workers do not get it released), an unclosed session is garbage-collected
and gives its PE back, and a worker that stops answering is killed and replaced. These run
against the shared stack of ``tests/conftest.py`` and clean up the processes they start.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import traceback
import weakref
from typing import Any

import numpy as np
import pytest

from npusim.client import _heartbeat, session
from npusim.client import _engine as client_engine
from npusim.client import _session as client_session
from npusim.client._workers import WorkerPool
from npusim.services.errors import DeviceUnavailable, WorkerCrashed
from npusim.services.protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Kind
from npusim.services.rpc import Peer
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, alive, wait_until

X = np.zeros((1, 3, 64, 64), np.float32)


RELEASE_AFTER_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS  # a daemon releases a silent session after this


# -- helpers -----------------------------------------------------------------------------
def _stats(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, timeout_s=5.0) as peer:
        return peer.request(Kind.STATS).body["stats"]


def _heartbeat_handles(endpoint: str) -> set[str]:
    with _heartbeat._lock:
        d = _heartbeat._daemons.get(endpoint)
        return set(d.sessions) if d is not None else set()


# -- the stored lost-session error --------------------------------------------------------
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


# -- the first heartbeat goes right after OPEN ---------------------------------------------
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


# -- an unclosed session is collected and gives its PE back --------------------------------
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


# -- a worker that stops answering is replaced -----------------------------------------------
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
