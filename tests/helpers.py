"""Start real service processes for tests: ipc sockets in a short private temp dir."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from npusim.services import launch
from npusim.services.server import Service


@dataclass
class RunningStack:
    run_dir: Path
    children: list[launch.Child]

    @property
    def compiler(self) -> str:
        return next(c.endpoint for c in self.children if c.kind == "compiler")

    @property
    def daemons(self) -> dict[str, str]:
        return {c.name: c.endpoint for c in self.children if c.kind == "daemon"}

    def child(self, name: str) -> launch.Child:
        return next(c for c in self.children if c.name == name)

    def env(self) -> dict[str, str]:
        return {
            "NPUSIM_COMPILER_ENDPOINT": self.compiler,
            "NPUSIM_DAEMON_ENDPOINTS": ",".join(f"{k}={v}" for k, v in self.daemons.items()),
            "NPUSIM_NO_EMBED": "1",
        }


@contextlib.contextmanager
def start_stack(devices: int = 1, *, compiler: bool = True, daemon_args: tuple[str, ...] = ()) -> Iterator[RunningStack]:
    rdir = Path(tempfile.mkdtemp(prefix="npusim-t-", dir="/tmp"))
    children = []
    try:
        if compiler:
            children.append(launch.start("compiler", "compiler", f"ipc://{rdir}/compiler.sock", rdir,
                                         extra=["--cache-dir", str(rdir / "cache")]))
        for i in range(devices):
            children.append(launch.start("daemon", f"npu{i}", f"ipc://{rdir}/npu{i}.sock", rdir,
                                         extra=list(daemon_args)))
        launch.wait_healthy(children)
        yield RunningStack(rdir, children)
    finally:
        launch.stop_all(children)
        shutil.rmtree(rdir, ignore_errors=True)


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone: it runs no code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``pred`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


@contextlib.contextmanager
def short_dir(prefix: str = "npt-") -> Iterator[Path]:
    """A private temp directory under /tmp, short enough for ipc socket paths (≤ 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(svc: Service) -> Iterator[threading.Thread]:
    """Run ``svc`` on a thread for the block; stop and join it afterwards."""
    t = threading.Thread(target=svc.serve_forever, name=f"test-{svc.name}", daemon=True)
    t.start()
    try:
        yield t
    finally:
        if t.is_alive():
            svc.stop()
        t.join(10)
        assert not t.is_alive(), f"{svc.name}: the service loop did not stop"
