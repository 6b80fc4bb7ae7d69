"""The service loop (services/server.py) at its edges: calls from other threads after
``serve_forever`` returned are dropped (they neither queue work for a loop that is gone nor
write into a descriptor that reused the wake pipe's number), and a reply that cannot be encoded
is answered with an error while the loop lives on, whether it was made inline or on another
thread. Each test runs an in-process service on a thread (ipc sockets in a short private temp
dir) and stops it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npusim.services.errors import ServiceError
from npusim.services.protocol import Kind, Message
from npusim.services.rpc import Peer
from npusim.services.server import Request, Service
from tests.helpers import serving


# -- late cross-thread calls after the loop ended ---------------------------------------------
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


# -- a reply that cannot be encoded ---------------------------------------------------------
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
