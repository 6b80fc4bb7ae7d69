"""The real ``npusim`` console script, driven as a user would: up, status, signals, keys."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import alive as _alive
from tests.helpers import wait_until as _wait_until

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")

# A shell started without job control runs background jobs with SIGINT ignored, and an ignored
# signal stays ignored across exec: if pytest itself was started that way, `npusim up` would never
# see our SIGINT. Restore the default disposition, then exec the real console script (same pid).
_DEFAULT_SIGINT_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])")


# -- helpers -----------------------------------------------------------------------------
def _oneline(text: str) -> str:
    """Undo terminal-width wrapping so messages can be matched as phrases."""
    return " ".join(text.split())


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private, short run dir under /tmp and a cache dir in the test's temp dir."""
    run_dir = Path(tempfile.mkdtemp(prefix="npc-", dir="/tmp"))
    env = dict(os.environ)
    for var in ("NPUSIM_COMPILER_ENDPOINT", "NPUSIM_DAEMON_ENDPOINTS", "NPUSIM_CURVE_DIR", "NPUSIM_DEVICES",
                "PYTEST_CURRENT_TEST", "PYTHONUNBUFFERED"):
        env.pop(var, None)
    env.update(NPUSIM_RUN_DIR=str(run_dir), NPUSIM_CACHE_DIR=str(tmp_path / "cache"), NO_COLOR="1")
    try:
        yield env
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_dir(env: dict[str, str]) -> Path:
    return Path(env["NPUSIM_RUN_DIR"])


def _npusim(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NPUSIM, *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


class Up:
    """A running ``npusim up`` whose output is collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        cmd = [sys.executable, "-c", _DEFAULT_SIGINT_EXEC, NPUSIM, "up", *args]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self.pids: list[int] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def _drain(self, timeout_s: float) -> bool:
        """Collect one line; False at EOF or timeout."""
        try:
            line = self._q.get(timeout=max(0.01, timeout_s))
        except queue.Empty:
            return False
        if line is None:
            self._q.put(None)
            return False
        self.lines.append(line)
        return True

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, word: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while word not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"`npusim up` did not print {word!r} within {timeout_s} s:\n{self.output}")
            if not self._drain(min(remaining, 0.5)) and self.proc.poll() is not None and self._q.empty():
                while self._drain(0.2):
                    pass
                if word not in self.output:
                    raise AssertionError(f"`npusim up` exited with {self.proc.returncode} before printing "
                                         f"{word!r}:\n{self.output}")

    def finish(self, timeout_s: float) -> int:
        rc = self.proc.wait(timeout_s)
        while self._drain(1.0):
            pass
        return rc

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def up_procs() -> Iterator[list[Up]]:
    started: list[Up] = []
    try:
        yield started
    finally:
        for u in started:
            u.cleanup()


def _status(env: dict[str, str]) -> dict[str, Any]:
    res = _npusim(env, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _free_port_pair() -> int:
    """A loopback port P such that P and P+1 are both free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- 1. up / status / stop on a signal --------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_status_and_stop(cli_env: dict[str, str], up_procs: list[Up], sig: signal.Signals) -> None:
    up = Up(cli_env, "--devices", "2")
    up_procs.append(up)
    up.wait_for("Ctrl-C to stop")
    assert re.search(r"\bready\b", up.output), up.output

    services = _status(cli_env)["services"]
    by_name = {s["name"]: s for s in services}
    assert set(by_name) == {"compiler", "npu0", "npu1"}, services
    up.pids = [s["pid"] for s in services]
    for s in services:
        assert s["state"] == "up", s
        assert isinstance(s["pid"], int) and _alive(s["pid"]), s
        assert s["endpoint"].startswith("ipc://" + str(_run_dir(cli_env))), s
    assert by_name["compiler"]["kind"] == "compiler"
    assert by_name["npu0"]["kind"] == by_name["npu1"]["kind"] == "daemon"
    assert len(set(up.pids)) == 3
    assert len(list(_run_dir(cli_env).glob("*.json"))) == 3

    up.proc.send_signal(sig)
    rc = up.finish(15)
    assert rc == 0, up.output
    assert "stopped" in up.output, up.output
    assert _wait_until(lambda: not any(_alive(p) for p in up.pids), 5.0), \
        f"services outlived `npusim up`: {[p for p in up.pids if _alive(p)]}"
    assert not list(_run_dir(cli_env).glob("*.json")), sorted(p.name for p in _run_dir(cli_env).iterdir())
    assert _status(cli_env)["services"] == []


# -- 2. tcp on loopback, and refusing a wildcard address -------------------------------------
@pytest.mark.timeout(180)
def test_up_binds_loopback_tcp(cli_env: dict[str, str], up_procs: list[Up]) -> None:
    port = _free_port_pair()
    up = Up(cli_env, "--bind", f"tcp://127.0.0.1:{port}")
    up_procs.append(up)
    up.wait_for("Ctrl-C to stop")

    services = {s["name"]: s for s in _status(cli_env)["services"]}
    up.pids = [s["pid"] for s in services.values()]
    assert set(services) == {"compiler", "npu0"}, services
    assert services["compiler"]["endpoint"] == f"tcp://127.0.0.1:{port}"
    assert services["npu0"]["endpoint"] == f"tcp://127.0.0.1:{port + 1}"
    assert all(s["state"] == "up" for s in services.values()), services

    up.proc.send_signal(signal.SIGINT)
    assert up.finish(15) == 0, up.output
    assert _wait_until(lambda: not any(_alive(p) for p in up.pids), 5.0)


@pytest.mark.timeout(60)
def test_up_refuses_wildcard_without_curve(cli_env: dict[str, str]) -> None:
    port = _free_port_pair()
    res = _npusim(cli_env, "up", "--bind", f"tcp://0.0.0.0:{port}", timeout_s=30)
    out = _oneline(res.stdout + res.stderr)
    assert res.returncode != 0, out
    assert "CURVE" in out and "npusim keys generate" in out, out
    assert "Ctrl-C to stop" not in out
    rdir = _run_dir(cli_env)
    assert not list(rdir.glob("*.json")) and not list(rdir.glob("*.log")), sorted(p.name for p in rdir.iterdir())
    assert _port_free(port) and _port_free(port + 1)


# -- 3. one stack per run dir ------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_second_up_on_same_run_dir_refuses(cli_env: dict[str, str], up_procs: list[Up]) -> None:
    first = Up(cli_env)
    up_procs.append(first)
    first.wait_for("Ctrl-C to stop")
    first.pids = [s["pid"] for s in _status(cli_env)["services"]]

    res = _npusim(cli_env, "up", timeout_s=60)
    out = _oneline(res.stdout + res.stderr)
    assert res.returncode != 0, out
    assert "already running" in out, out
    assert "Ctrl-C to stop" not in out

    # The first stack is untouched.
    assert first.proc.poll() is None
    services = _status(cli_env)["services"]
    assert sorted(s["pid"] for s in services) == sorted(first.pids)
    assert all(s["state"] == "up" for s in services)

    first.proc.send_signal(signal.SIGINT)
    assert first.finish(15) == 0, first.output
    assert _wait_until(lambda: not any(_alive(p) for p in first.pids), 5.0)


# -- 4. status with nothing running; help ------------------------------------------------------
@pytest.mark.timeout(60)
def test_status_with_nothing_running_hints_up(cli_env: dict[str, str]) -> None:
    res = _npusim(cli_env, "status")
    assert res.returncode == 0, res.stderr
    assert "`npusim up`" in _oneline(res.stdout + res.stderr), res.stdout
    assert _status(cli_env)["services"] == []


@pytest.mark.timeout(60)
def test_help_lists_commands(cli_env: dict[str, str]) -> None:
    res = _npusim(cli_env, "--help")
    assert res.returncode == 0, res.stderr
    listed = set(re.findall(r"^\W*(\w+)\s{2,}\S", res.stdout, flags=re.MULTILINE))
    for cmd in ("up", "status", "demo", "compiler", "daemon", "keys"):
        assert cmd in listed, f"{cmd!r} missing from --help:\n{res.stdout}"


# -- 5. keys ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_keys_generate(cli_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "keys"
    res = _npusim(cli_env, "keys", "generate", str(target))
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        assert (target / name).is_file(), f"{name} missing; have {sorted(p.name for p in target.iterdir())}"
    assert (target / "server.key_secret").stat().st_mode & 0o077 == 0
    assert (target / "client.key_secret").stat().st_mode & 0o077 == 0
    assert str(target) in _oneline(res.stdout)
