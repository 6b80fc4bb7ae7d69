"""A private stack for a benchmark: a compiler service and one timing-only daemon at a chosen
time scale, in a temp dir, with this process's environment pointed at them. Shared by
``workers.py`` and ``plan_vs_live.py``."""

from __future__ import annotations

import os
from pathlib import Path

from npusim.services import launch


class Stack:
    """A compiler and one timing-only daemon at a given time scale, for this process's sessions."""

    def __init__(self, tmp: str, scale: float) -> None:
        self.dir = Path(tmp)
        self.compiler = launch.start("compiler", "compiler", f"ipc://{tmp}/compiler.sock", self.dir,
                                     extra=["--cache-dir", f"{tmp}/cache"])
        self.daemon: launch.Child | None = None
        self.scale = 0.0
        launch.wait_healthy([self.compiler])
        os.environ["NPUSIM_COMPILER_ENDPOINT"] = self.compiler.endpoint
        os.environ["NPUSIM_NO_EMBED"] = "1"
        self.rescale(scale)

    def rescale(self, scale: float) -> None:
        """A fresh daemon at ``scale`` (a new one: the old one's clock and counters do not carry over)."""
        if self.daemon is not None:
            launch.stop_all([self.daemon])
        self.daemon = launch.start("daemon", "npu0", f"ipc://{self.dir}/npu0-{scale:g}.sock", self.dir,
                                   extra=["--timing-only", "--time-scale", f"{scale:g}"])
        launch.wait_healthy([self.daemon])
        os.environ["NPUSIM_DAEMON_ENDPOINTS"] = f"npu0={self.daemon.endpoint}"
        self.scale = scale

    def close(self) -> None:
        launch.stop_all([c for c in (self.daemon, self.compiler) if c is not None])
