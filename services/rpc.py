"""The requesting side of a DEALER/ROUTER pair: send, wait with a deadline, match the id.

A DEALER never locks step, so a reply that arrives after its request timed out is just
skipped by id. With ``watch_disconnect`` a socket monitor turns a peer that dies mid-request
into an immediate error instead of a wait for the whole timeout.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from npusim.services.config import ENV_MAX_MESSAGE, env_int
from npusim.services.config import timeout_s as default_timeout
from npusim.services.errors import NpusimError, ProtocolError, ServiceUnavailable, from_wire
from npusim.services.protocol import DEFAULT_MAX_MESSAGE_BYTES, Kind, Message, decode, encode
from npusim.services.sockets import CurveKeys, connect, load_keys, new_socket, recv_frames, send_frames

__all__ = ["Peer"]

LEARN_LIMIT_ABOVE = 1 << 20
"""Before its first message larger than this, a Peer asks the service for its size limit."""
MONITOR_SLICE_S = 0.05
"""How often a waiting request looks at the socket monitor for a lost peer."""


class Peer:
    """A connection to one service. Not thread-safe: one Peer per thread."""

    def __init__(
        self,
        endpoint: str,
        *,
        name: str | None = None,
        ctx: zmq.Context | None = None,
        timeout_s: float | None = None,
        keys: CurveKeys | None = None,
        unavailable: type[NpusimError] = ServiceUnavailable,
        watch_disconnect: bool = False,
        max_message_bytes: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name or endpoint
        self.timeout_s = default_timeout(timeout_s)
        self.unavailable = unavailable
        self.max_message_bytes = max_message_bytes or env_int(ENV_MAX_MESSAGE, DEFAULT_MAX_MESSAGE_BYTES, minimum=1024)
        self._ctx = ctx or zmq.Context.instance()
        self.sock = new_socket(self._ctx, zmq.DEALER, rcvtimeo_ms=int(MONITOR_SLICE_S * 1000))
        self._monitor: zmq.Socket | None = None
        if watch_disconnect:
            self._monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        self.lost = False
        self._limit_known = False
        connect(self.sock, endpoint, keys=keys if keys is not None else load_keys())
        self._ids = itertools.count(1)

    def send(self, kind: Kind, body: dict[str, Any] | None = None,
             tensors: list[tuple[str, np.ndarray]] | None = None, *, traceparent: str | None = None) -> int:
        if self._monitor is not None:
            self._check_monitor()
        rid = next(self._ids)
        frames = encode(Message(kind, rid, body or {}, tensors or [], traceparent))
        size = sum(memoryview(f).nbytes for f in frames)
        if size > LEARN_LIMIT_ABOVE and not self._limit_known and kind != Kind.HEALTH:
            self.adopt_limit()
        if size > self.max_message_bytes:
            raise ProtocolError(
                f"a {kind.name} message of {size} bytes exceeds the {self.max_message_bytes}-byte limit; "
                f"send smaller tensors or raise {ENV_MAX_MESSAGE} on both sides",
                details={"size": size, "limit": self.max_message_bytes})
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            raise self.unavailable(f"{self.name} at {self.endpoint} is not accepting messages "
                                   "(its queue is full or it is not running); check `npusim status`") from None
        return rid

    def adopt_limit(self, limit: int | None = None) -> None:
        """Use the service's message limit when it is smaller than ours (asks HEALTH if not given),
        so an oversize request is refused here with a clear error instead of being dropped by
        the service's socket."""
        if limit is None:
            limit = self.request(Kind.HEALTH).body.get("max_message_bytes")
        self._limit_known = True
        if type(limit) is int and 0 < limit < self.max_message_bytes:
            self.max_message_bytes = limit

    def request(self, kind: Kind, body: dict[str, Any] | None = None,
                tensors: list[tuple[str, np.ndarray]] | None = None, *,
                traceparent: str | None = None, timeout_s: float | None = None) -> Message:
        """Send one request and return its reply; an ERROR reply is raised as its class."""
        rid = self.send(kind, body, tensors, traceparent=traceparent)
        return self.wait(rid, kind, timeout_s=timeout_s)

    def wait(self, rid: int, kind: Kind, *, timeout_s: float | None = None) -> Message:
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.unavailable(
                    f"{self.name} at {self.endpoint} did not answer {kind.name} within {limit:g} s; "
                    "is it running? (`npusim status`)",
                    details={"endpoint": self.endpoint, "timeout_s": limit},
                )
            # Wait in slices (the socket's receive timeout); a lost peer is noticed between slices.
            # A blocking receive, not a poll: one call into libzmq per reply.
            try:
                if remaining >= MONITOR_SLICE_S:
                    frames = recv_frames(self.sock)
                elif self.sock.poll(max(1, int(remaining * 1000))):
                    frames = recv_frames(self.sock, zmq.NOBLOCK)
                else:
                    raise zmq.Again()
            except zmq.Again:
                if self._monitor is not None:
                    self._check_monitor()
                continue
            try:
                msg = decode(frames, max_message_bytes=self.max_message_bytes)
            except ProtocolError as e:
                raise ProtocolError(f"malformed reply from {self.name}: {e}") from None
            if msg.id != rid:
                continue  # a late reply to a request that already timed out
            if msg.kind == Kind.ERROR:
                raise from_wire(msg.body)
            return msg

    def _check_monitor(self) -> None:
        """Fold pending monitor events into the state; raise if the peer is gone."""
        assert self._monitor is not None
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self.lost = False
            elif event == zmq.EVENT_DISCONNECTED:
                self.lost = True
        if self.lost:
            raise self.unavailable(
                f"lost the connection to {self.name} at {self.endpoint}: the process died or "
                "closed the socket; restart it (`npusim up`) and open a new session",
                details={"endpoint": self.endpoint},
            )

    def close(self, linger_ms: int = 500) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.sock.close(linger=linger_ms)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
