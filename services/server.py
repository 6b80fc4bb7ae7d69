"""The serving side: one ROUTER socket, one loop, handlers by message kind.

The loop waits on the socket's file descriptor with ``select`` so timers fire with
microsecond resolution (``zmq_poll`` rounds to milliseconds, too coarse for an emulated
NPU job of a few hundred microseconds). Every message takes one path: decode → handler →
encode.

Handlers run on the loop thread; slow work (a compile, an onnxruntime run) goes to a thread
that hands its reply back through :meth:`Service.reply`, which is thread-safe. A message that
fails to decode is answered with a ProtocolError and counted; a handler that raises is
answered with its error. The loop itself never dies of a bad message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from npusim.services import __version__
from npusim.services.errors import NpusimError, ProtocolError, ServiceError
from npusim.services.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Kind,
    Message,
    decode,
    encode,
    error_message,
    peek_id,
)
from npusim.services.sockets import CurveKeys, bind, new_socket, recv_frames, release_context, send_frames

__all__ = ["Request", "Service"]

log = logging.getLogger("npusim.server")

# Plain ints: zmq's flag enums cost a microsecond per operation on the hot path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_KIND_NAMES = {k: k.name for k in Kind}


@dataclass(slots=True)
class Request:
    """A decoded request and where to send its reply."""

    peer: bytes
    msg: Message
    received_ns: int  # time.monotonic_ns() when the loop read it
    frames: list[Any]  # the message as received, without the peer: its header is frames[0]


@dataclass
class _Stats:
    received: int = 0
    replied: int = 0
    protocol_errors: int = 0
    handler_errors: int = 0
    undeliverable: int = 0
    busy_ns: int = 0  # time the loop spent handling messages (its load)
    by_kind: dict[str, int] = field(default_factory=dict)


Handler = Callable[[Request], Message | None]


class Service:
    """A ROUTER service. Subclasses fill :attr:`handlers` and :meth:`info`."""

    service = "service"

    def __init__(self, name: str, endpoint: str, *, keys: CurveKeys | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, parent_pid: int | None = None) -> None:
        self.name = name
        self.max_message_bytes = max_message_bytes
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.sock = new_socket(self.ctx, zmq.ROUTER, max_message_bytes=max_message_bytes, sndtimeo_ms=0)
        self.endpoint = bind(self.sock, endpoint, keys=keys)
        self.started = time.time()
        self.stats = _Stats()
        self.handlers: dict[Kind, Handler] = {Kind.HEALTH: self._health, Kind.STATS: self._stats_handler}
        self._outbox: deque[tuple[bytes, Message]] = deque()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()  # orders late cross-thread calls against shutdown
        self.orphaned = False
        self._loop_ident: int | None = None  # threading.get_ident() of the loop thread

    # -- what subclasses provide -------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Extra fields for HEALTH_OK (devices, cache, ...)."""
        return {}

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def tick(self) -> None:
        """Called on the loop thread about every 0.5 s, never more often (liveness checks)."""

    def on_stop(self) -> None:
        """Called on the loop thread after the loop ends, before the socket closes."""

    # -- thread-safe API ----------------------------------------------------------
    def reply(self, req: Request, msg: Message) -> None:
        """Queue a reply from any thread; the loop sends it (dropped once the service has stopped)."""
        if threading.get_ident() == self._loop_ident:
            self._send(req.peer, msg)
            return
        with self._close_lock:
            if self._closed:
                log.info("%s: dropped a %s reply that came after the service stopped", self.name, msg.kind.name)
                return
            self._outbox.append((req.peer, msg))
            self._wake()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread as soon as possible (from any thread)."""
        with self._close_lock:
            if self._closed:
                return
            self._calls.append(fn)
            self._wake()

    def stop(self) -> None:
        self._stopping.set()
        with self._close_lock:
            if not self._closed:
                self._wake()

    # -- loop-thread API ----------------------------------------------------------
    def call_at(self, when_ns: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread at ``time.monotonic_ns() >= when_ns``."""
        heapq.heappush(self._timers, (when_ns, next(self._seq), fn))

    def serve_forever(self) -> None:
        self._loop_ident = threading.get_ident()
        fd = self.sock.getsockopt(zmq.FD)
        next_tick = time.monotonic()
        try:
            while not self._stopping.is_set():
                busy = self._drain_socket()
                while self._calls:
                    self._guard(self._calls.popleft())
                self._flush_outbox()
                now = time.monotonic_ns()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self._timers)
                    self._guard(fn)
                    now = time.monotonic_ns()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + 0.5
                    self._check_parent()
                    self._guard(self.tick)
                if busy or self._outbox or self._calls or (self.sock.getsockopt(_EVENTS) & _POLLIN):
                    continue
                wait = max(0.0, next_tick - time.monotonic())
                if self._timers:
                    wait = min(wait, max(0.0, (self._timers[0][0] - time.monotonic_ns()) / 1e9))
                r, _, _ = select.select([fd, self._wake_r], [], [], wait)
                if self._wake_r in r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
        finally:
            self._guard(self.on_stop)
            with self._close_lock:
                self._closed = True
            self._flush_outbox()
            self.sock.close(linger=1000)
            os.close(self._wake_r)
            os.close(self._wake_w)
            release_context(self.ctx)
            self.ctx.term()

    # -- internals ----------------------------------------------------------------
    def _flush_outbox(self) -> None:
        while self._outbox:
            peer, msg = self._outbox.popleft()
            self._guard(lambda: self._send(peer, msg))

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: the loop is awake or gone either way

    def _check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("%s: parent process %d is gone; stopping", self.name, self.parent_pid)
            self.orphaned = True
            self._stopping.set()

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a timer or hook must not kill the loop
            log.exception("%s: error in %r", self.name, fn)

    def _drain_socket(self, budget: int = 64) -> bool:
        """Handle up to ``budget`` messages; True if more may be waiting."""
        sock = self.sock
        for _ in range(budget):
            if not sock.getsockopt(_EVENTS) & _POLLIN:
                return False  # asked first: a zmq.Again per drained socket costs more than the question
            frames = recv_frames(sock, _NOBLOCK)
            t0 = time.perf_counter_ns()
            try:
                self._dispatch(frames, time.monotonic_ns())
            except Exception:  # noqa: BLE001 - whatever one message does, the service lives on
                log.exception("%s: unexpected error handling a message", self.name)
            self.stats.busy_ns += time.perf_counter_ns() - t0
            if self._timers and self._timers[0][0] <= time.monotonic_ns():
                return True
        return True

    def _dispatch(self, frames: list[Any], received: int) -> None:
        self.stats.received += 1
        peer = frames[0].bytes
        body = frames[1:]
        try:
            msg = decode(body, max_message_bytes=self.max_message_bytes)
        except Exception as e:  # noqa: BLE001 - decode raises ProtocolError; anything else is a decoder bug
            self.stats.protocol_errors += 1
            err = e if isinstance(e, ProtocolError) else ProtocolError(f"undecodable message: {type(e).__name__}")
            if not isinstance(e, ProtocolError):
                log.exception("%s: decoder failed on a message", self.name)
            self._send(peer, error_message(peek_id(body) if body else 0, err))
            return
        name = _KIND_NAMES[msg.kind]
        self.stats.by_kind[name] = self.stats.by_kind.get(name, 0) + 1
        handler = self.handlers.get(msg.kind)
        if handler is None:
            self.stats.protocol_errors += 1
            self._send(peer, error_message(msg.id, ProtocolError(
                f"the {self.service} does not handle {msg.kind.name} messages")))
            return
        try:
            out = handler(Request(peer, msg, received, body))
        except NpusimError as e:
            self.stats.handler_errors += 1
            out = error_message(msg.id, e)
        except Exception as e:  # noqa: BLE001 - report, never die
            self.stats.handler_errors += 1
            log.exception("%s: handler for %s failed", self.name, msg.kind.name)
            out = error_message(msg.id, e)
        if out is not None:
            self._send(peer, out)

    def _send(self, peer: bytes, msg: Message) -> None:
        try:
            frames = encode(msg)
        except Exception as e:  # noqa: BLE001 - a reply we cannot encode is still answered
            self.stats.handler_errors += 1
            log.exception("%s: could not encode %s", self.name, msg.kind.name)
            frames = encode(error_message(msg.id, e if isinstance(e, ProtocolError) else ServiceError(
                f"the {self.service} could not encode its {msg.kind.name} reply: {type(e).__name__}: {e}")))
        try:
            send_frames(self.sock, [peer, *frames], _NOBLOCK)
            self.stats.replied += 1
        except zmq.ZMQError as e:
            # The requester vanished or stopped reading: its own timeout reports the loss.
            self.stats.undeliverable += 1
            log.debug("%s: reply %s to %r undeliverable: %s", self.name, msg.kind.name, peer, e)

    def _health(self, req: Request) -> Message:
        body = {
            "service": self.service,
            "name": self.name,
            "pid": os.getpid(),
            "version": __version__,
            "endpoint": self.endpoint,
            "uptime_s": time.time() - self.started,
            "max_message_bytes": self.max_message_bytes,
        }
        body.update(self.info())
        return req.msg.reply(Kind.HEALTH_OK, body)

    def _stats_handler(self, req: Request) -> Message:
        stats = asdict(self.stats)
        stats.update(self.extra_stats())
        return req.msg.reply(Kind.STATS_OK, {"stats": stats})
