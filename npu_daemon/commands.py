"""The device daemon's command: ``npusim daemon``, registered through ``npusim.commands``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.services.cli import service_args

__all__ = ["register"]


def service_main(args: list[str]) -> int:
    from npusim.npu_daemon.__main__ import main

    return int(main(args) or 0)


def register(app: typer.Typer) -> None:
    @app.command()
    def daemon(
        device: str = typer.Option("npu0", help="device name: npu0, npu1, ..."),
        bind: Optional[str] = typer.Option(None, help="ipc://PATH or tcp://127.0.0.1:PORT (default: ipc in the run dir)"),
        run_dir: Optional[Path] = typer.Option(None, help="run directory"),
        timing_only: bool = typer.Option(False, help="emulate timing only; outputs are zero-filled"),
        ort_threads: int = typer.Option(1, help="onnxruntime threads for functional execution"),
        time_scale: float = typer.Option(1.0, help="scale every emulated duration (0 = no emulated time)"),
        jitter: float = typer.Option(0.0, help="relative std-dev of execution time (0: deterministic)"),
        seed: int = typer.Option(0, help="seed of the jitter"),
        hw: list[str] = typer.Option([], help="hardware knob KEY=VALUE, e.g. pcie_bytes_per_s=7.9e9 (repeatable)"),
        curve_dir: Optional[Path] = typer.Option(None, help="CURVE key directory (required beyond loopback)"),
        metrics_port: int = typer.Option(0, min=0, max=65535, help="serve Prometheus /metrics on 127.0.0.1:PORT (0: off)"),
    ) -> None:
        """Run one emulated NPU device in the foreground."""
        args = service_args(device, bind, run_dir, curve_dir)
        args += ["--ort-threads", str(ort_threads), "--time-scale", str(time_scale), "--jitter", str(jitter),
                 "--seed", str(seed)]
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        for item in hw:
            args += ["--hw", item]
        if timing_only:
            args.append("--timing-only")
        raise typer.Exit(service_main(args))

