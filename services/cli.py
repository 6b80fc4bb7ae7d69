"""``npusim``: the one command-line entry point.

Commands are declared here (so ``--help`` is instant) and their bodies live with the package
that owns them, resolved from a dotted name at call time: ``services`` never imports
``compiler_svc``, ``npu_daemon`` or ``client`` at module level.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from services.errors import NpusimError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="npusim: an emulated Warboy-class NPU inference stack (compiler, device daemons, client).")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for serving beyond loopback.")
app.add_typer(keys_app, name="keys")


def _resolve(target: str) -> Any:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _call(target: str, **kwargs: Any) -> Any:
    try:
        return _resolve(target)(**kwargs)
    except NpusimError as e:
        typer.secho(f"npusim: {type(e).__name__}: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _module_main(module: str, args: list[str]) -> None:
    rc = importlib.import_module(f"{module}.__main__").main(args)
    raise typer.Exit(rc)


def _service_args(name: str, bind: Optional[str], run_dir: Optional[Path], curve_dir: Optional[Path]) -> list[str]:
    args = ["--name", name]
    if bind:
        args += ["--bind", bind]
    if run_dir:
        args += ["--run-dir", str(run_dir)]
    if curve_dir:
        args += ["--curve-dir", str(curve_dir)]
    return args


@app.command()
def compiler(
    bind: Optional[str] = typer.Option(None, help="ipc://PATH or tcp://127.0.0.1:PORT (default: ipc in the run dir)"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default $NPUSIM_RUN_DIR or /tmp/npusim-UID)"),
    cache_dir: Optional[Path] = typer.Option(None, help="program cache (default ~/.cache/npusim/programs)"),
    cache_max_bytes: Optional[int] = typer.Option(None, help="cache size limit; 0 disables the cache"),
    curve_dir: Optional[Path] = typer.Option(None, help="CURVE key directory (required beyond loopback)"),
) -> None:
    """Run the compiler service in the foreground."""
    args = _service_args("compiler", bind, run_dir, curve_dir)
    if cache_dir:
        args += ["--cache-dir", str(cache_dir)]
    if cache_max_bytes is not None:
        args += ["--cache-max-bytes", str(cache_max_bytes)]
    _module_main("compiler_svc", args)


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
    args = _service_args(device, bind, run_dir, curve_dir)
    args += ["--ort-threads", str(ort_threads), "--time-scale", str(time_scale), "--jitter", str(jitter),
             "--seed", str(seed)]
    if metrics_port:
        args += ["--metrics-port", str(metrics_port)]
    for item in hw:
        args += ["--hw", item]
    if timing_only:
        args.append("--timing-only")
    _module_main("npu_daemon", args)


@app.command()
def up(
    devices: int = typer.Option(1, min=1, help="number of emulated devices (npu0, npu1, ...)"),
    bind: Optional[str] = typer.Option(None, help="tcp://127.0.0.1:PORT: compiler on PORT, npuN on PORT+1+N"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    timing_only: bool = typer.Option(False, help="daemons emulate timing only"),
    curve_dir: Optional[Path] = typer.Option(None, help="CURVE key directory (required beyond loopback)"),
    metrics_port: int = typer.Option(0, min=0, max=65535,
                                     help="npuN serves Prometheus /metrics on 127.0.0.1:PORT+N (0: off)"),
) -> None:
    """Start the compiler service and N device daemons; stop them all on Ctrl-C or SIGTERM."""
    _call("services.stack_cli:up", devices=devices, bind=bind, run_dir=run_dir, timing_only=timing_only,
          curve_dir=curve_dir, metrics_port=metrics_port)


@app.command()
def status(
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """List the running services and devices, with their PEs."""
    _call("services.stack_cli:status", run_dir=run_dir, json_out=json_out)


@app.command()
def top(
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    once: bool = typer.Option(False, "--once", help="take two samples, print them and exit"),
    interval: Optional[float] = typer.Option(None, help="seconds between samples (default 1, or 0.5 with --once)"),
    fmt: str = typer.Option("table", "--format", help="table or json (without --once: one JSON line per sample)"),
) -> None:
    """Live per-PE view of every running device: utilisation, compute and IO share, queue, jobs/s, owner."""
    raise typer.Exit(_call("services.top:top", run_dir=run_dir, once=once, interval=interval, fmt=fmt))


@app.command()
def demo(
    requests: int = typer.Option(200, "-n", "--requests", min=1, help="timed requests"),
    trace: Path = typer.Option(Path("trace.json"), help="Chrome/Perfetto trace to write"),
    width: int = typer.Option(64, help="input width (and height) of the demo CNN"),
) -> None:
    """Build a small CNN, compile it, run it, print latency, throughput and per-operator times."""
    _call("client.demo:run", requests=requests, trace=trace, width=width)


@app.command()
def bench(
    model: str = typer.Argument(..., help="an .onnx or .enf path, or zoo:NAME for a built-in model"),
    devices: Optional[str] = typer.Option(None, "-d", "--devices", help="device string, e.g. 'warboy(2)*1', "
                                          "'warboy(1)*2', 'npu0pe0' (default NPUSIM_DEVICES, else warboy(2)*1)"),
    workers: int = typer.Option(1, "-w", "--workers", min=1, help="worker processes (CPU operators)"),
    batch: int = typer.Option(1, "-b", "--batch", min=1, help="batch size to compile for"),
    workload: str = typer.Option("throughput", "--workload", help="latency (L): one query at a time; "
                                 "throughput (T): many in flight"),
    duration: float = typer.Option(0.0, "--duration", min=0.0, help="seconds to run (0: run -n queries)"),
    queries: int = typer.Option(100, "-n", "--queries", min=1, help="queries to run when --duration is 0"),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="warm-up queries, not counted "
                                         "(default 2 per worker, at least 5)"),
    in_flight: Optional[int] = typer.Option(None, "--in-flight", min=1, help="throughput workload: queries in "
                                            "flight (default max(8, 2 × workers))"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write every figure to this JSON file"),
    trace_output: Optional[Path] = typer.Option(None, "-T", "--trace-output", help="write a Chrome/Perfetto trace "
                                                "of the measured queries"),
    compiler_config: Optional[Path] = typer.Option(None, "-C", "--compiler-config", help="YAML/JSON file of "
                                                   "compiler_config keys"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object instead of the report"),
) -> None:
    """Load-test a model: QPS, latency percentiles, NPU utilisation, CPU vs NPU time per query, and the
    ideal 1 / max(NPU, CPU / workers) next to the measured rate."""
    _call("client.bench:run", model=model, device=devices, workers=workers, batch=batch, workload=workload,
          duration=duration, queries=queries, warmup=warmup, in_flight=in_flight, output=output,
          trace_output=trace_output, compiler_config=compiler_config, json_out=json_out)


@app.command("compile")
def compile_(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="ONNX model (float or quantised)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="program to write (default MODEL.enf)"),
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
    _call("compiler_svc.cli:compile_cmd", model=model, output=output, target_npu=target_npu, batch_size=batch_size,
          compiler_config=compiler_config, calibration_method=calibration_method, calibration_data=calibration_data,
          calibration_samples=calibration_samples, with_quantize=with_quantize,
          normalized_pixel_outputs=normalized_pixel_outputs, no_cache=no_cache, input_shape=input_shape)


@app.command()
def explain(
    program: Path = typer.Argument(..., exists=True, dir_okay=False, help="an .enf program"),
    json_out: bool = typer.Option(False, "--json", help="print the program's header as JSON"),
) -> None:
    """Show a program: every CPU and NPU operator, where it runs and why, layouts, costs, SRAM fit."""
    _call("compiler_svc.cli:explain", program_path=program, json_out=json_out)


@app.command()
def estimate(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="an ONNX model or an .enf program"),
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
    step_costs = _resolve("client.hostcost:measure_steps") if host == "this" else None
    _call("compiler_svc.estimate:estimate_cmd", model=model, target_npu=target_npu, batch_size=batch_size, hw=hw,
          host=host, step_costs=step_costs, json_out=json_out)


@keys_app.command("generate")
def keys_generate(directory: Path = typer.Argument(..., help="where to write the key pairs")) -> None:
    """Create server and client CURVE key pairs (and authorise the client)."""
    keys = _call("services.sockets:generate_keys", directory=directory)
    typer.echo(f"wrote CURVE keys to {keys.directory}; serve with --curve-dir {keys.directory}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
