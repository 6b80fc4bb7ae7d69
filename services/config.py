"""Settings shared by every process: an explicit argument wins, then an ``NPUSIM_*``
environment variable, then the default here. Values are validated when read, and a bad
one raises :class:`~services.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TypeVar

from npusim.services.errors import ConfigError

_N = TypeVar("_N", int, float)

__all__ = [
    "ENV_RUN_DIR",
    "ENV_COMPILER",
    "ENV_DAEMONS",
    "ENV_TIMEOUT",
    "ENV_MAX_MESSAGE",
    "ENV_CURVE_DIR",
    "ENV_NO_EMBED",
    "env_float",
    "env_int",
    "run_dir",
    "private_dir",
]

ENV_RUN_DIR = "NPUSIM_RUN_DIR"
"""Directory holding ipc sockets and one registry file per running service."""
ENV_COMPILER = "NPUSIM_COMPILER_ENDPOINT"
"""Endpoint of a compiler service to use instead of looking in the run directory."""
ENV_DAEMONS = "NPUSIM_DAEMON_ENDPOINTS"
"""Comma list of ``name=endpoint`` (or bare endpoints) of device daemons to use."""
ENV_TIMEOUT = "NPUSIM_TIMEOUT_S"
"""Seconds a client waits for any single reply before declaring the peer dead."""
ENV_MAX_MESSAGE = "NPUSIM_MAX_MESSAGE_BYTES"
ENV_CURVE_DIR = "NPUSIM_CURVE_DIR"
"""Directory with CURVE keys (see ``npusim keys``); required to bind beyond loopback."""
ENV_NO_EMBED = "NPUSIM_NO_EMBED"
"""Set to 1 to make the client fail instead of starting a private stack."""

DEFAULT_TIMEOUT_S = 30.0


def _env(name: str, default: _N, parse: type[_N], minimum: _N | None) -> _N:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        kind = "an integer" if parse is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}; unset it or give {kind}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env(name, default, float, minimum)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return _env(name, default, int, minimum)


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private.

    ipc sockets are files: anyone who can reach them can drive the device, so the
    directory that holds them must not be shared (and we do not silently change the
    permissions of a directory the user chose).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"run directory {path} belongs to uid {st.st_uid}, not to you; "
                          f"set {ENV_RUN_DIR} to a directory of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"run directory {path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"`chmod 700 {path}` or choose a new directory")
    return path


def run_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The run directory: argument, then ``NPUSIM_RUN_DIR``, then ``$XDG_RUNTIME_DIR/npusim``
    or ``/tmp/npusim-<uid>``. Kept short because ipc socket paths are limited to 107 bytes."""
    if explicit:
        return private_dir(Path(explicit))
    env = os.environ.get(ENV_RUN_DIR)
    if env:
        return private_dir(Path(env))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(xdg) / "npusim" if xdg and Path(xdg).is_dir() else Path(tempfile.gettempdir()) / f"npusim-{os.getuid()}"
    return private_dir(base)


def timeout_s(explicit: float | None = None) -> float:
    if explicit is not None:
        if explicit <= 0:
            raise ConfigError(f"timeout must be positive, got {explicit!r}")
        return float(explicit)
    return env_float(ENV_TIMEOUT, DEFAULT_TIMEOUT_S, minimum=0.001)
