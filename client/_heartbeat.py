"""One heartbeat thread per process: tells each daemon, once a second, which sessions live.

A daemon releases a session whose heartbeats stop for three intervals, so a client that
dies without closing leaks no PE. The thread holds no reference to any Session — only a
small :class:`Liveness` shared with it — so an unclosed session can still be collected
and finalized.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import zmq

from npusim.services.errors import DeviceUnavailable, NpusimError, SessionClosed
from npusim.services.protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Kind
from npusim.services.rpc import Peer

__all__ = ["Liveness", "register", "unregister"]

log = logging.getLogger("npusim.client")


@dataclass
class Liveness:
    """What the heartbeat learned about one session: None while it lives."""

    lost: NpusimError | None = None


@dataclass
class _Daemon:
    name: str
    sessions: dict[str, Liveness] = field(default_factory=dict)
    misses: int = 0


_lock = threading.Lock()
_daemons: dict[str, _Daemon] = {}
_wake = threading.Event()
_thread: threading.Thread | None = None


def register(endpoint: str, device: str, handle: str, liveness: Liveness) -> None:
    """Start beating for ``handle`` on the daemon at ``endpoint`` (the first beat goes at once)."""
    global _thread
    with _lock:
        _daemons.setdefault(endpoint, _Daemon(device)).sessions[handle] = liveness
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="npusim-heartbeat", daemon=True)
            _thread.start()
    _wake.set()


def unregister(endpoint: str, handle: str) -> None:
    with _lock:
        d = _daemons.get(endpoint)
        if d is not None:
            d.sessions.pop(handle, None)
            if not d.sessions:
                del _daemons[endpoint]


def _run() -> None:
    peers: dict[str, Peer] = {}
    try:
        while True:
            with _lock:
                targets = {ep: (d, dict(d.sessions)) for ep, d in _daemons.items()}
            for ep in list(peers):
                if ep not in targets:
                    peers.pop(ep).close(linger_ms=0)
            for ep, (d, sessions) in targets.items():
                if ep not in peers:
                    peers[ep] = Peer(ep, name=d.name, ctx=zmq.Context.instance(), timeout_s=HEARTBEAT_INTERVAL_S,
                                     unavailable=DeviceUnavailable, watch_disconnect=True)
                _beat(peers, ep, d, sessions)
            _wake.wait(HEARTBEAT_INTERVAL_S)
            _wake.clear()
    except Exception:  # noqa: BLE001 - never silently: mark every session lost
        log.exception("npusim heartbeat thread failed")
        with _lock:
            for d in _daemons.values():
                for live in d.sessions.values():
                    live.lost = live.lost or DeviceUnavailable("the heartbeat thread failed; see the log")


def _beat(peers: dict[str, Peer], ep: str, d: _Daemon, sessions: dict[str, Liveness]) -> None:
    peer = peers[ep]
    try:
        reply = peer.request(Kind.HEARTBEAT, {"handles": list(sessions)})
    except NpusimError as e:
        d.misses += 1
        if d.misses >= HEARTBEAT_LIVENESS or peer.lost:
            for live in sessions.values():
                live.lost = live.lost or DeviceUnavailable(
                    f"{d.name} at {ep} stopped answering ({e}); restart it (`npusim up`) and create a new session",
                    details={"endpoint": ep})
            peers.pop(ep).close(linger_ms=0)
        return
    d.misses = 0
    for h in reply.body.get("dead") or []:
        live = sessions.get(h) if isinstance(h, str) else None
        if live is not None and live.lost is None:
            live.lost = SessionClosed(f"{d.name} released this session (its heartbeats were missed or the "
                                      "daemon restarted); create a new session")
