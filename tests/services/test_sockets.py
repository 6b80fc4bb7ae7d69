"""Socket policy: which endpoints may be bound, CURVE keys, and a CURVE round trip on loopback.

Network use is confined to 127.0.0.1 and ipc sockets in private temp directories.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from npusim.services import sockets
from npusim.services.config import ENV_CURVE_DIR
from npusim.services.errors import ConfigError
from npusim.services.sockets import (
    IPC_PATH_MAX,
    CurveKeys,
    bind,
    check_bind_endpoint,
    connect,
    generate_keys,
    ipc_endpoint,
    is_loopback,
    load_keys,
    new_socket,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> CurveKeys:
    return generate_keys(tmp_path_factory.mktemp("curve") / "keys")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path, for ipc sockets (107-byte limit)."""
    d = Path(tempfile.mkdtemp(prefix="npt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _term(ctx: zmq.Context) -> None:
    # services.sockets.bind starts a ZAP authenticator per context and never stops it
    # (see test_curve_service_stops); stop it here, or ctx.term() would block forever.
    auth = getattr(sockets, "_authenticators", {}).pop(id(ctx), None)
    if auth is not None:
        auth.stop()
    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "zmq context did not terminate"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    _term(c)


# -- check_bind_endpoint ---------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", [
    "ipc:///tmp/npusim-x/daemon.sock",
    "ipc://relative.sock",
    "inproc://plumbing",
    "tcp://127.0.0.1:5555",
    "tcp://127.0.0.1:0",
    "tcp://127.9.8.7:5555",
    "tcp://localhost:5555",
    "tcp://localhost",
    "tcp://[::1]:5555",
    "tcp://[::1]:0",
])
def test_local_endpoints_need_no_keys(endpoint: str) -> None:
    check_bind_endpoint(endpoint, None)


PUBLIC = ["tcp://0.0.0.0:5555", "tcp://10.1.2.3:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://eth0:5555",
          "tcp://example.com:5555", "tcp://192.168.1.1:0"]


@pytest.mark.parametrize("endpoint", PUBLIC)
def test_public_endpoints_are_refused_without_keys(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CURVE_DIR, raising=False)
    with pytest.raises(ConfigError, match="npusim keys generate") as e:
        check_bind_endpoint(endpoint, None)
    assert endpoint in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("endpoint", PUBLIC)
def test_public_endpoints_are_accepted_with_keys(endpoint: str, keys: CurveKeys) -> None:
    check_bind_endpoint(endpoint, keys)  # only checked: nothing is bound


def test_public_endpoint_refused_with_client_only_keys(keys: CurveKeys, tmp_path: Path) -> None:
    """A client host has server.key (public) but no server secret: it cannot serve publicly."""
    d = tmp_path / "client-side"
    d.mkdir()
    for name in ("server.key", "client.key", "client.key_secret"):
        shutil.copy(keys.directory / name, d / name)
    client_keys = load_keys(d)
    assert client_keys is not None and client_keys.server_secret is None
    assert client_keys.client_secret == keys.client_secret
    with pytest.raises(ConfigError, match="npusim keys generate"):
        check_bind_endpoint("tcp://0.0.0.0:5555", client_keys)


@pytest.mark.parametrize("endpoint", ["udp://127.0.0.1:5555", "pgm://eth0;239.192.1.1:5555",
                                      "ws://127.0.0.1:5555", "127.0.0.1:5555", ""])
def test_other_transports_are_refused(endpoint: str, keys: CurveKeys) -> None:
    with pytest.raises(ConfigError, match="cannot bind"):
        check_bind_endpoint(endpoint, None)
    with pytest.raises(ConfigError, match="cannot bind"):
        check_bind_endpoint(endpoint, keys)


def test_ipc_path_length_limit() -> None:
    ok = "/tmp/" + "x" * (IPC_PATH_MAX - 5)
    assert len(ok) == IPC_PATH_MAX == 107
    check_bind_endpoint(f"ipc://{ok}", None)
    with pytest.raises(ConfigError, match="exceeds 107 bytes"):
        check_bind_endpoint(f"ipc://{ok}x", None)
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        ipc_endpoint(Path("/tmp") / ("d" * 100), "daemon")
    assert ipc_endpoint(Path("/tmp/n"), "npu0") == "ipc:///tmp/n/npu0.sock"


def test_ipc_path_limit_counts_bytes() -> None:
    path = "/tmp/" + "\u00e9" * 60
    assert len(path) <= IPC_PATH_MAX < len(path.encode())
    with pytest.raises(ConfigError):
        check_bind_endpoint(f"ipc://{path}", None)


def test_is_loopback() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.255.0.1", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "*", "", "eth0", "localhost.example.com"))


# -- keys --------------------------------------------------------------------------------------
def test_generate_and_load_keys(tmp_path: Path) -> None:
    d = tmp_path / "a" / "keys"
    made = generate_keys(d)
    assert made.directory == d
    for key in (made.server_public, made.server_secret, made.client_public, made.client_secret):
        assert isinstance(key, bytes) and len(key) == 40  # Z85 of 32 bytes
    assert len({made.server_public, made.server_secret, made.client_public, made.client_secret}) == 4
    assert load_keys(d) == made
    assert load_keys(str(d)) == made
    assert (made.authorized_dir / "client.key").read_bytes() == (d / "client.key").read_bytes()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.authorized_dir.stat().st_mode) == 0o700
    for secret in d.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_generate_keys_twice_makes_new_keys(tmp_path: Path) -> None:
    assert generate_keys(tmp_path / "one").server_secret != generate_keys(tmp_path / "two").server_secret


def test_load_keys_from_environment(keys: CurveKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CURVE_DIR, str(keys.directory))
    assert load_keys() == keys
    assert load_keys(None) == keys


def test_load_keys_none_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CURVE_DIR, raising=False)
    assert load_keys(None) is None
    assert load_keys() is None
    monkeypatch.setenv(ENV_CURVE_DIR, "")
    assert load_keys(None) is None


@pytest.mark.parametrize("make", ["empty", "missing", "only-client"])
def test_load_keys_without_server_key(make: str, keys: CurveKeys, tmp_path: Path) -> None:
    d = tmp_path / "k"
    if make != "missing":
        d.mkdir()
    if make == "only-client":
        shutil.copy(keys.directory / "client.key_secret", d / "client.key_secret")
    with pytest.raises(ConfigError, match="no server.key.*npusim keys generate"):
        load_keys(d)


def test_connect_with_keys_but_no_client_pair(keys: CurveKeys, ctx: zmq.Context) -> None:
    server_only = CurveKeys(keys.directory, keys.server_public, keys.server_secret, None, None)
    s = new_socket(ctx, zmq.DEALER, linger_ms=0)
    try:
        with pytest.raises(ConfigError, match="no client key pair"):
            connect(s, "tcp://127.0.0.1:5555", keys=server_only)
    finally:
        s.close(linger=0)


# -- sockets -----------------------------------------------------------------------------------
def test_new_socket_options(ctx: zmq.Context) -> None:
    r = new_socket(ctx, zmq.ROUTER, hwm=7, linger_ms=3, max_message_bytes=1000, sndtimeo_ms=11, rcvtimeo_ms=13)
    try:
        assert r.getsockopt(zmq.SNDHWM) == r.getsockopt(zmq.RCVHWM) == 7
        assert r.getsockopt(zmq.LINGER) == 3
        assert r.getsockopt(zmq.SNDTIMEO) == 11
        assert r.getsockopt(zmq.RCVTIMEO) == 13
        assert r.getsockopt(zmq.MAXMSGSIZE) == 1000 + sockets.MAX_HEADER_BYTES
    finally:
        r.close(linger=0)


@pytest.mark.parametrize("kind", [zmq.REQ, zmq.REP, zmq.PUB, zmq.SUB])
def test_new_socket_refuses_lockstep_and_pubsub(kind: int, ctx: zmq.Context) -> None:
    with pytest.raises(ValueError, match="DEALER/ROUTER"):
        new_socket(ctx, kind)


def test_bind_ipc_and_loopback_without_keys(ctx: zmq.Context, short_dir: Path) -> None:
    r1 = new_socket(ctx, zmq.ROUTER, linger_ms=0)
    r2 = new_socket(ctx, zmq.ROUTER, linger_ms=0)
    d = new_socket(ctx, zmq.DEALER, linger_ms=0)
    try:
        ep = f"ipc://{short_dir}/svc.sock"
        assert bind(r1, ep) == ep
        tcp = bind(r2, "tcp://127.0.0.1:0")
        assert tcp.startswith("tcp://127.0.0.1:") and not tcp.endswith(":0")
        connect(d, ep)
        d.send(b"ping")
        assert r1.poll(5000)
        peer, data = r1.recv_multipart()
        assert data == b"ping"
    finally:
        for s in (r1, r2, d):
            s.close(linger=0)


def _echo_once(router: zmq.Socket, timeout_ms: int) -> bytes | None:
    """Reply to one message if one arrives; return its payload."""
    if not router.poll(timeout_ms):
        return None
    peer, data = router.recv_multipart()
    router.send_multipart([peer, b"echo:" + data])
    return data


def test_curve_round_trip_on_loopback(keys: CurveKeys, ctx: zmq.Context, tmp_path: Path) -> None:
    router = new_socket(ctx, zmq.ROUTER, linger_ms=0)
    good = new_socket(ctx, zmq.DEALER, linger_ms=0)
    plain = new_socket(ctx, zmq.DEALER, linger_ms=0)
    stranger = new_socket(ctx, zmq.DEALER, linger_ms=0)
    try:
        endpoint = bind(router, "tcp://127.0.0.1:0", keys=keys)
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
        assert router.getsockopt(zmq.CURVE_SERVER) == 1

        # An authorised client: the message arrives encrypted and the reply comes back.
        connect(good, endpoint, keys=keys)
        good.send(b"hello")
        assert _echo_once(router, 5000) == b"hello"
        assert good.poll(5000)
        assert good.recv() == b"echo:hello"

        # No keys: the CURVE handshake never completes; nothing arrives, nothing comes back.
        connect(plain, endpoint, keys=None)
        plain.send(b"plain")
        assert _echo_once(router, 500) is None
        assert plain.poll(500) == 0

        # A valid CURVE client whose key is not in authorized_clients: ZAP turns it away.
        other = generate_keys(tmp_path / "other")
        unauthorised = CurveKeys(other.directory, keys.server_public, None, other.client_public, other.client_secret)
        connect(stranger, endpoint, keys=unauthorised)
        stranger.send(b"stranger")
        assert _echo_once(router, 500) is None
        assert stranger.poll(500) == 0

        # The authorised client still works afterwards.
        good.send(b"again")
        assert _echo_once(router, 5000) == b"again"
        assert good.poll(5000) and good.recv() == b"echo:again"
    finally:
        for s in (router, good, plain, stranger):
            s.close(linger=0)


@pytest.mark.timeout(60)
def test_curve_service_stops(tmp_path: Path) -> None:
    """Run in a child process: the hang must not leak into the test process."""
    script = textwrap.dedent(f"""
        import os, threading
        from npusim.services.sockets import generate_keys
        from npusim.services.server import Service
        keys = generate_keys({str(tmp_path / "keys")!r})
        svc = Service("curve-test", "tcp://127.0.0.1:0", keys=keys)
        t = threading.Thread(target=svc.serve_forever, daemon=True)
        t.start()
        svc.stop()
        t.join(5)
        print("HUNG" if t.is_alive() else "STOPPED", flush=True)
        os._exit(3 if t.is_alive() else 0)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUSIM_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=45, env=env)
    assert proc.returncode == 0 and "STOPPED" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-2000:])
