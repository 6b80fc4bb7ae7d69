"""The compiler's commands: ``npusim compiler``, ``compile``, ``explain``, ``estimate``, ``plan``.

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


    @app.command()
    def plan(
        model: str = typer.Argument(..., help="an ONNX model, an .enf program, or zoo:NAME"),
        devices: str = typer.Option("warboy(2)*1", "-d", "--devices", help="device string, e.g. 'warboy(2)*1', "
                                    "'warboy(1)*2' (two single PEs), 'npu0pe0'"),
        workers: str = typer.Option("1", "-w", "--workers", help="worker_num, or a comma list to sweep (1,2,4,8)"),
        batch: str = typer.Option("1", "-b", "--batch", help="batch size, or a comma list to sweep (1,8)"),
        concurrency: Optional[str] = typer.Option(None, help="closed loop: requests in flight (comma list to sweep); "
                                                  "default max(8, 2 × workers), as bench"),
        rate: Optional[str] = typer.Option(None, help="open loop: requests/s (comma list to sweep)"),
        rate_file: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                 help="open loop: arrival times in seconds, one per line"),
        arrivals: str = typer.Option("poisson", help="with --rate: poisson or constant gaps"),
        host: str = typer.Option("mlperf", help="host profile: mlperf (the published figures' host; host operators "
                                 "outside the timed path) or this (host operators measured here with the real kernels)"),
        host_cores: Optional[int] = typer.Option(None, min=1, help="host cores the workers share (default: the "
                                                 "profile's: 76 for mlperf, this machine's for this)"),
        host_scale: float = typer.Option(1.0, help="what-if: multiply every host cost (0.5: a host twice as fast)"),
        time_scale: float = typer.Option(1.0, help="stretch the device as the daemon's --time-scale does"),
        slo: Optional[str] = typer.Option(None, help="latency objective, e.g. 'p99<5ms': marks each configuration and "
                                          "finds the largest rate that meets it"),
        target_rate: Optional[float] = typer.Option(None, help="with --slo: how many devices serve this many samples/s"),
        duration: Optional[float] = typer.Option(None, help="stop after this many virtual seconds"),
        queries: int = typer.Option(10_000, "-n", "--queries", min=1, help="requests per configuration"),
        warmup: Optional[int] = typer.Option(None, min=0, help="requests not counted (default 2 per worker, at least 5)"),
        input_queue: int = typer.Option(1024, min=1, help="the session's input queue size"),
        output_queue: int = typer.Option(1024, min=1, help="the session's output queue size (matters with "
                                         "--consumer-us: a full one holds the workers)"),
        consumer_us: float = typer.Option(0.0, min=0.0, help="the caller's own time per answer (its post-processing, "
                                          "one thread); 0: answers are taken at once"),
        sessions: int = typer.Option(1, min=1, help="clients, each opening --devices (its own PEs) with the workers, "
                                     "queue and load of a row; figures are for all of them together"),
        seed: int = typer.Option(0, help="seed of the Poisson arrivals"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
        plot: Optional[Path] = typer.Option(None, dir_okay=False, help="write throughput and latency against each "
                                            "swept knob to this PNG"),
        report: Optional[Path] = typer.Option(None, dir_okay=False, help="write one self-contained HTML report "
                                              "(table, plots, capacity) to this file"),
    ) -> None:
        """Simulate the whole pipeline in virtual time at the chip's speed: throughput, latency percentiles,
        utilisation and what bounds it, for every configuration of the sweep; capacity within an SLO."""
        from npusim.compiler_svc import plan as plan_mod

        def ints(text: str | None, name: str) -> tuple[int, ...]:
            return tuple(_items(text, name, int))

        def floats(text: str | None, name: str) -> tuple[float, ...]:
            return tuple(_items(text, name, float))

        def body() -> None:
            cfg = plan_mod.PlanConfig(
                devices=devices, workers=ints(workers, "workers"), batch=ints(batch, "batch"),
                concurrency=ints(concurrency, "concurrency"), rate=floats(rate, "rate"), rate_file=rate_file,
                arrivals=arrivals, host=host, host_cores=host_cores, host_scale=host_scale, time_scale=time_scale,
                requests=queries, warmup=warmup, duration_s=duration, input_queue=input_queue,
                output_queue=output_queue, consumer_us=consumer_us, sessions=sessions, slo=slo,
                target_rate=target_rate, seed=seed)
            plan_mod.plan_cmd(cfg, model=model, step_costs=host_step_costs(host), json_out=json_out, plot=plot,
                              report_path=report)

        call(body)


    @app.command()
    def advise(
        model: str = typer.Argument(..., help="a float ONNX model, or zoo:NAME"),
        samples: str = typer.Option("random", help="DIR of .npy/.npz samples, or 'random' (image-like samples): "
                                    "half calibrate, half measure the accuracy"),
        n_samples: int = typer.Option(8, min=2, help="with --samples random: how many"),
        devices: str = typer.Option("warboy(2)*1", "-d", "--devices", help="the devices the model runs on today"),
        target: str = typer.Option("latency", help="rank for latency (one request at a time) or throughput"),
        workers: int = typer.Option(1, "-w", "--workers", min=1, help="the session's worker_num today"),
        check: list[str] = typer.Option([], help="run only this check (repeatable): with_quantize, "
                                        "normalized_pixel_outputs, layout, patch_size, batch_size, pe_mode, "
                                        "worker_num, async_depth"),
        queries: int = typer.Option(2_000, "-n", "--queries", min=10, help="simulated requests per prediction"),
        time_scale: float = typer.Option(1.0, help="stretch the device as the daemon's --time-scale does (to compare "
                                         "with a live run)"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
        report: Optional[Path] = typer.Option(None, dir_okay=False, help="write one self-contained HTML report"),
    ) -> None:
        """The seed's checklist applied to a model: each change's chip-scale effect, the host time it saves
        (measured here), its accuracy cost and its code, ranked for the target."""
        from npusim.compiler_svc import advise as advise_mod

        def body() -> None:
            cfg = advise_mod.AdviseConfig(devices=devices, target=target, workers=workers, samples=samples,
                                          n_samples=n_samples, requests=queries, time_scale=time_scale)
            advise_mod.advise_cmd(cfg, model=model, step_costs=host_step_costs("this"), only=tuple(check),
                                  json_out=json_out, report_path=report)

        call(body)


def _items(text: str | None, name: str, kind: type) -> list[Any]:
    """A comma list's items as ``kind``; ConfigError naming the option when one is not."""
    from npusim.services.errors import ConfigError

    try:
        return [kind(x.strip()) for x in (text or "").split(",") if x.strip()]
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"--{name} {text!r}: {what} or a comma list of them, e.g. 1,2,4") from None
