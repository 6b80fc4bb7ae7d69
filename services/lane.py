"""The serving loop's compiled path (``services/_lane.c``), and where it cannot be used.

A service's loop reads and answers its socket through a :class:`~services._lane.Lane` when it
can: the extension calls the libzmq that pyzmq loaded, on pyzmq's own socket, so it needs to
find that library in this process (Linux: ``/proc/self/maps``) and to see the same version
pyzmq reports. Where the extension is not built (no C compiler at install), the library cannot
be found (a pyzmq that links libzmq statically), or ``NPUSIM_LANE=0`` is set, :func:`open_lane`
returns None and the loop reads and writes with pyzmq: slower, with the same results.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import zmq

from services.config import ENV_LANE

__all__ = ["ENV_LANE", "Lane", "Outputs", "available", "open_lane"]

log = logging.getLogger("npusim.lane")

_lane: Any
try:
    import services._lane as _lane  # type: ignore[no-redef]
except ImportError:  # not compiled here: pyzmq serves
    _lane = None

Lane = Any if _lane is None else _lane.Lane
Outputs = Any if _lane is None else _lane.Outputs


def _libzmq_paths() -> set[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    paths = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and Path(fields[5]).name.startswith("libzmq"):
            paths.add(fields[5])
    return paths


@lru_cache(maxsize=1)
def _bind() -> str | None:
    """Resolve libzmq for the extension once; None when it can be used, else why not."""
    if _lane is None:
        return "the extension services._lane is not built"
    paths = _libzmq_paths()
    if len(paths) != 1:
        return f"{len(paths)} libzmq libraries are loaded; the lane needs exactly pyzmq's one"
    path = paths.pop()
    try:
        version = _lane.bind(path)
    except OSError as e:
        return str(e)
    if tuple(version) != zmq.zmq_version_info():
        return f"{path} is libzmq {version}, pyzmq uses {zmq.zmq_version()}"
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
