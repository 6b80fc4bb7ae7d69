"""The compiler's commands: ``npusim compiler``, ``compile``, ``explain``, ``estimate``.

Registered through the ``npusim.commands`` entry-point group; the bodies import what they need
when they run, so ``npusim --help`` stays quick.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

import typer

from npusim.services.cli import call, service_args

__all__ = ["HOST_PROFILES", "host_step_costs", "register"]

HOST_PROFILES = "npusim.host_profiles"
"""Entry points that time a program's host steps for a host profile (the client registers ``this``)."""


def host_step_costs(host: str) -> Callable[..., Any] | None:
    """The step-timing function a host profile needs, from the package that has the kernels."""
    found = [ep for ep in entry_points(group=HOST_PROFILES) if ep.name == host]
    return found[0].load() if found else None


def service_main(args: list[str]) -> int:
    from npusim.compiler_svc.__main__ import main

    return int(main(args) or 0)


def register(app: typer.Typer) -> None:
    @app.command()
    def compiler(
        bind: Optional[str] = typer.Option(None, help="ipc://PATH or tcp://127.0.0.1:PORT (default: ipc in the run dir)"),
        run_dir: Optional[Path] = typer.Option(None, help="run directory (default $NPUSIM_RUN_DIR or /tmp/npusim-UID)"),
        cache_dir: Optional[Path] = typer.Option(None, help="program cache (default ~/.cache/npusim/programs)"),
        cache_max_bytes: Optional[int] = typer.Option(None, help="cache size limit; 0 disables the cache"),
        curve_dir: Optional[Path] = typer.Option(None, help="CURVE key directory (required beyond loopback)"),
    ) -> None:
        """Run the compiler service in the foreground."""
        args = service_args("compiler", bind, run_dir, curve_dir)
        if cache_dir:
            args += ["--cache-dir", str(cache_dir)]
        if cache_max_bytes is not None:
            args += ["--cache-max-bytes", str(cache_max_bytes)]
        raise typer.Exit(service_main(args))

    @app.command("compile")
    def compile_(
        model: str = typer.Argument(..., help="an ONNX model (float or quantised), or zoo:NAME"),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="program to write (default MODEL.enf, or NAME.enf for zoo:NAME)"),
        target_npu: str = typer.Option("warboy-2pe", help="warboy (one PE) or warboy-2pe (fused pe0-1)"),
        batch_size: int = typer.Option(1, "-b", "--batch-size", min=1, help="multiplies dim 0 of inputs and outputs"),
        compiler_config: Optional[Path] = typer.Option(None, help="YAML/JSON file of compiler_config keys"),
        calibration_method: str = typer.Option("MIN_MAX_ASYM", help="one of the ten CalibrationMethod names"),
        calibration_data: Optional[str] = typer.Option(None, help="DIR of .npy/.npz samples, or 'random' (float models)"),
        calibration_samples: int = typer.Option(8, help="random samples to calibrate on with --calibration-data random"),
        with_quantize: bool = typer.Option(True, "--with-quantize/--no-with-quantize", help="--no-with-quantize: uint8 input"),
        normalized_pixel_outputs: list[int] = typer.Option([], help="output index to return as uint8 (repeatable)"),
        input_shape: list[str] = typer.Option([], help="NAME=D0,D1,... fixes a dynamic input dimension (repeatable)"),
        no_cache: bool = typer.Option(False, help="compile even if the program cache has this program"),
    ) -> None:
        """Compile an ONNX model into an .enf program, stage by stage."""
        from npusim.compiler_svc import cli

        call(cli.compile_cmd, model=model, output=output, target_npu=target_npu, batch_size=batch_size,
             compiler_config=compiler_config, calibration_method=calibration_method, calibration_data=calibration_data,
             calibration_samples=calibration_samples, with_quantize=with_quantize,
             normalized_pixel_outputs=normalized_pixel_outputs, no_cache=no_cache, input_shape=input_shape)

    @app.command()
    def explain(
        program: Path = typer.Argument(..., exists=True, dir_okay=False, help="an .enf program"),
        json_out: bool = typer.Option(False, "--json", help="print the program's header as JSON"),
    ) -> None:
        """Show a program: every CPU and NPU operator, where it runs and why, layouts, costs, SRAM fit."""
        from npusim.compiler_svc import cli

        call(cli.explain, program_path=program, json_out=json_out)

    @app.command()
    def estimate(
        model: str = typer.Argument(..., help="an ONNX model, an .enf program, or zoo:NAME"),
        target_npu: str = typer.Option("all", help="warboy (one PE), warboy-2pe (fused pe0-1) or all"),
        batch_size: list[int] = typer.Option([], "-b", "--batch-size", help="batch to compile for (repeatable; "
                                             "default 1 and 8; an .enf keeps its own)"),
        hw: list[str] = typer.Option([], help="what-if hardware knob KEY=VALUE, e.g. sram_per_slice=131072 (repeatable)"),
        host: str = typer.Option("mlperf", help="host profile of the end-to-end latency: mlperf (how the chip's "
                                 "published figures were measured: host operators outside the timed path) or this "
                                 "(host operators timed on this machine)"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Predict a model's cost without a daemon: per-operator cycles, NPU and DMA time, and end-to-end
        latency (each term) and throughput per PE mode (pe0, pe0-1, pe0+pe1) and batch size."""
        from npusim.compiler_svc import estimate as estimate_mod

        step_costs = host_step_costs(host)
        call(estimate_mod.estimate_cmd, model=model, target_npu=target_npu, batch_size=batch_size, hw=hw,
             host=host, step_costs=step_costs, json_out=json_out)

