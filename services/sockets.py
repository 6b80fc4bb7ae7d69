"""Socket factory that fixes the known pyzmq traps in one place.

- DEALER/ROUTER only: REQ/REP's strict lockstep deadlocks the moment a reply is lost.
- ``ROUTER_MANDATORY``: a reply to a peer that vanished raises instead of vanishing.
- Bounded high-water marks and a send timeout: a stuck peer back-pressures, never hangs.
- A positive ``LINGER``: 0 would drop large in-flight messages on close.
- ``MAXMSGSIZE`` on every receiving socket, so a hostile peer cannot exhaust memory.
- Endpoints: ipc in a private directory by default; tcp on loopback; anything wider only
  with CURVE keys (:func:`generate_keys`), which ZAP checks against an allow-list.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from npusim.services.config import ENV_CURVE_DIR
from npusim.services.errors import ConfigError
from npusim.services.protocol import DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES

__all__ = [
    "CurveKeys",
    "new_socket",
    "bind",
    "connect",
    "check_bind_endpoint",
    "is_loopback",
    "generate_keys",
    "load_keys",
    "ipc_endpoint",
    "release_context",
    "send_frames",
    "recv_frames",
]

DEFAULT_HWM = 1000
DEFAULT_LINGER_MS = 2000
DEFAULT_SNDTIMEO_MS = 10_000
DEFAULT_RCVTIMEO_MS = 60_000
"""A safety net: every receive already follows a poll with its own deadline."""
IPC_PATH_MAX = 107


@dataclass(frozen=True)
class CurveKeys:
    """CURVE material from a key directory made by :func:`generate_keys`."""

    directory: Path
    server_public: bytes
    server_secret: bytes | None
    client_public: bytes | None
    client_secret: bytes | None

    @property
    def authorized_dir(self) -> Path:
        return self.directory / "authorized_clients"


def generate_keys(directory: str | os.PathLike[str]) -> CurveKeys:
    """Create a server and a client key pair and authorise the client.

    Give the whole directory to the service host; the client host needs ``server.key``
    and the ``client.key*`` pair.
    """
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(d), "server")
    zmq.auth.create_certificates(str(d), "client")
    auth = d / "authorized_clients"
    auth.mkdir(mode=0o700, exist_ok=True)
    (auth / "client.key").write_bytes((d / "client.key").read_bytes())
    for p in d.glob("*.key_secret"):
        p.chmod(0o600)
    return load_keys(d)


def load_keys(directory: str | os.PathLike[str] | None = None) -> CurveKeys | None:
    """Keys from ``directory`` or ``NPUSIM_CURVE_DIR``; None when neither is set."""
    raw = directory or os.environ.get(ENV_CURVE_DIR)
    if not raw:
        return None
    d = Path(raw)
    if not (d / "server.key").is_file():
        raise ConfigError(f"{d} holds no server.key; create keys with `npusim keys generate {d}`")

    def pair(name: str) -> tuple[bytes | None, bytes | None]:
        if (d / f"{name}.key_secret").is_file():
            return zmq.auth.load_certificate(str(d / f"{name}.key_secret"))
        if (d / f"{name}.key").is_file():
            return zmq.auth.load_certificate(str(d / f"{name}.key"))
        return None, None

    spub, ssec = pair("server")
    cpub, csec = pair("client")
    assert spub is not None
    return CurveKeys(d, spub, ssec, cpub, csec)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ipc_endpoint(directory: Path, name: str) -> str:
    path = str(directory / f"{name}.sock")
    if len(path.encode()) > IPC_PATH_MAX:
        raise ConfigError(f"ipc socket path {path!r} is longer than {IPC_PATH_MAX} bytes; "
                          "use a shorter NPUSIM_RUN_DIR")
    return f"ipc://{path}"


def check_bind_endpoint(endpoint: str, keys: CurveKeys | None) -> None:
    """Refuse endpoints that would expose a service beyond this machine without CURVE."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        if parts.scheme == "ipc" and len(endpoint.encode()) - len("ipc://") > IPC_PATH_MAX:
            raise ConfigError(f"ipc path in {endpoint!r} exceeds {IPC_PATH_MAX} bytes")
        return
    if parts.scheme != "tcp":
        raise ConfigError(f"cannot bind {endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")
    host = parts.hostname or ""
    if is_loopback(host):
        return
    if keys is None or keys.server_secret is None:
        raise ConfigError(
            f"refusing to bind {endpoint!r}: it is reachable beyond this machine and anyone who can "
            "connect could drive the device. Bind tcp://127.0.0.1:PORT, or generate CURVE keys with "
            f"`npusim keys generate DIR` and pass --curve-dir DIR (or set {ENV_CURVE_DIR})"
        )


def new_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    sndtimeo_ms: int = DEFAULT_SNDTIMEO_MS,
    rcvtimeo_ms: int = DEFAULT_RCVTIMEO_MS,
) -> zmq.Socket:
    if kind not in (zmq.DEALER, zmq.ROUTER):
        raise ValueError("npusim sockets are DEALER/ROUTER: REQ/REP lock-step deadlocks on a lost reply")
    s = ctx.socket(kind)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, linger_ms)
    s.setsockopt(zmq.SNDTIMEO, sndtimeo_ms)
    s.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
    # One frame may be a whole tensor; the whole message is checked again in decode().
    s.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + MAX_HEADER_BYTES)
    if kind == zmq.ROUTER:
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return s


_auth_lock = threading.Lock()
_authenticators: dict[int, ThreadAuthenticator] = {}


def bind(sock: zmq.Socket, endpoint: str, *, keys: CurveKeys | None = None) -> str:
    """Bind after :func:`check_bind_endpoint`; with keys, as a CURVE server behind ZAP."""
    check_bind_endpoint(endpoint, keys)
    if keys is not None and keys.server_secret is not None and endpoint.startswith("tcp://"):
        with _auth_lock:
            ctx = sock.context
            if id(ctx) not in _authenticators:
                auth = ThreadAuthenticator(ctx)
                auth.start()
                auth.configure_curve(domain="*", location=str(keys.authorized_dir))
                _authenticators[id(ctx)] = auth
        sock.curve_secretkey = keys.server_secret
        sock.curve_publickey = keys.server_public
        sock.curve_server = True
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT) if endpoint.endswith(":0") else endpoint


def release_context(ctx: zmq.Context) -> None:
    """Stop the ZAP authenticator thread of ``ctx`` (if any) so ``ctx.term()`` can return."""
    with _auth_lock:
        auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


def connect(sock: zmq.Socket, endpoint: str, *, keys: CurveKeys | None = None) -> None:
    """Connect; over tcp with keys configured, as an authenticated CURVE client."""
    if keys is not None and endpoint.startswith("tcp://"):
        if keys.client_secret is None or keys.client_public is None:
            raise ConfigError(f"{keys.directory} has no client key pair for connecting to {endpoint}")
        sock.curve_secretkey = keys.client_secret
        sock.curve_publickey = keys.client_public
        sock.curve_serverkey = keys.server_public
    sock.connect(endpoint)


# Plain ints: pyzmq's flag enums cost about a microsecond per operation, and its
# send_multipart / recv_multipart wrappers about five per message, on every hot path.
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """``sock.send_multipart(frames, copy=False, flags=flags)``, without the wrapper's overhead."""
    send = sock.send
    more = _SNDMORE | int(flags)
    for f in frames[:-1]:
        send(f, more, copy=False)
    send(frames[-1], int(flags), copy=False)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """``sock.recv_multipart(flags, copy=False)``, without the wrapper's overhead."""
    recv = sock.recv
    parts = [recv(flags, copy=False)]
    while sock.get(_RCVMORE):
        parts.append(recv(flags, copy=False))
    return parts
