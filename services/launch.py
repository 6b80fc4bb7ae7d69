"""Start service processes, wait until each answers HEALTH, stop them all.

Used by ``npusim up`` and by the client's embedded stack. Services start as
``python -m <module>`` in their own session (terminal signals reach only the parent, which
forwards them) and are given the parent's pid: a service whose parent vanishes stops itself,
so not even a SIGKILLed parent leaves a process behind. Which module runs each kind of service
is declared by the package that has it, in the ``npusim.services`` entry-point group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from npusim.services.errors import ServiceUnavailable
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer

__all__ = ["Child", "SERVICES", "module_of", "start", "wait_healthy", "stop_all"]

SERVICES = "npusim.services"
"""Entry-point group: a service kind (``compiler``, ``daemon``) → the module ``python -m`` runs."""


def module_of(kind: str) -> str:
    """The module that runs a service of this kind, as its package declares it."""
    found = [ep for ep in entry_points(group=SERVICES) if ep.name == kind]
    if not found:
        raise ServiceUnavailable(f"no installed package provides the {kind!r} service (entry point group "
                                 f"{SERVICES!r}); reinstall npusim")
    return found[0].module.removesuffix(".__main__")


@dataclass
class Child:
    kind: str
    name: str
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def start(kind: str, name: str, endpoint: str, run_dir: Path, *, extra: Sequence[str] = (),
          env: dict[str, str] | None = None) -> Child:
    log_path = run_dir / f"{name}.log"
    cmd = [sys.executable, "-m", module_of(kind), "--name", name, "--bind", endpoint,
           "--run-dir", str(run_dir), "--parent-pid", str(os.getpid()), *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    return Child(kind, name, endpoint, proc, log_path)


def wait_healthy(children: Sequence[Child], *, timeout_s: float = 60.0) -> None:
    """Block until every child answers HEALTH; on failure stop them all and raise."""
    deadline = time.monotonic() + timeout_s
    peers = {c.name: Peer(c.endpoint, name=c.name, timeout_s=timeout_s) for c in children}
    try:
        pending = list(children)
        while pending:
            child = pending[0]
            rc = child.proc.poll()
            if rc is not None:
                raise ServiceUnavailable(f"{child.kind} {child.name!r} exited with code {rc} while starting:\n"
                                         f"{child.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{child.kind} {child.name!r} did not answer HEALTH within "
                                         f"{timeout_s:g} s; see {child.log_path}")
            try:
                peers[child.name].request(Kind.HEALTH, timeout_s=0.25)
                pending.pop(0)
            except ServiceUnavailable:
                continue
    except BaseException:
        stop_all(children)
        raise
    finally:
        for p in peers.values():
            p.close(linger_ms=0)


def stop_all(children: Sequence[Child], *, timeout_s: float = 10.0) -> list[str]:
    """SIGTERM every child, wait, SIGKILL stragglers. Returns names that had to be killed."""
    for c in children:
        if c.proc.poll() is None:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    killed = []
    for c in children:
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
            killed.append(c.name)
    return killed

