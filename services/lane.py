"""The serving loop's compiled path (``services/_lane.c``), and where it cannot be used.

A service's loop reads and answers its socket through a :class:`~services._lane.Lane` when it
can: the extension calls the libzmq that pyzmq loaded, on pyzmq's own socket, so it must find
that library's functions through pyzmq's compiled backend and see the version pyzmq reports.
Where the extension is not built (no C compiler at install), pyzmq runs another backend or hides
libzmq's symbols, or ``NPUSIM_LANE=0`` is set, :func:`open_lane` returns None and the loop
reads and writes with pyzmq: slower, with the same results.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

import zmq

from services.config import ENV_LANE

__all__ = ["ENV_LANE", "Outputs", "SocketError", "available", "open_lane"]

log = logging.getLogger("npusim.lane")

_lane: Any
try:
    import services._lane as _lane  # type: ignore[no-redef]
except ImportError:  # not compiled here: pyzmq serves
    _lane = None

Outputs = Any if _lane is None else _lane.Outputs


class _NoSocketError(OSError):
    """Never raised: what ``except SocketError`` catches where the extension is not built."""


SocketError: type[OSError] = _NoSocketError if _lane is None else _lane.SocketError


@lru_cache(maxsize=1)
def _bind() -> str | None:
    """Resolve libzmq for the extension once; None when it can be used, else why not.

    The functions are looked up through pyzmq's own compiled backend (dlsym searches a library
    and everything it links), so they are the very libzmq its sockets belong to, whether pyzmq
    links a bundled copy, the system's, or carries libzmq inside itself."""
    if _lane is None:
        return "the extension services._lane is not built"
    try:
        from zmq.backend.cython import _zmq as backend
    except ImportError:
        return "pyzmq does not use its Cython backend here"
    try:
        version = _lane.bind(backend.__file__)
    except OSError as e:
        return str(e)
    if tuple(version) != zmq.zmq_version_info():
        return f"the lane found libzmq {version}, pyzmq reports {zmq.zmq_version()}"
    return None


def available() -> str | None:
    """None when services can use the lane; otherwise the reason they serve through pyzmq."""
    if os.environ.get(ENV_LANE, "1") == "0":
        return f"{ENV_LANE}=0"
    return _bind()


def open_lane(sock: zmq.Socket) -> Any | None:
    """A Lane on ``sock`` for the thread that owns it, or None (see :func:`available`)."""
    why = available()
    if why is not None:
        log.info("serving through pyzmq: %s", why)
        return None
    return _lane.Lane(sock.underlying)
