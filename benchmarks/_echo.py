"""A raw ZeroMQ ROUTER echo in its own process: the reference round trip benchmarks compare to."""

from __future__ import annotations

from typing import Any

import zmq


def echo(endpoint: str, ready: Any, unbounded: bool = False) -> None:
    """Echo every message back until one says ``quit``. ``unbounded``: no high-water marks,
    for a driver that keeps many messages in flight."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    if unbounded:
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
    s.bind(endpoint)
    ready.set()
    while True:
        m = s.recv_multipart(copy=False)
        if len(m) == 2 and m[1].bytes == b"quit":
            break
        s.send_multipart(m, copy=False)
    s.close(linger=0)
    ctx.term()
