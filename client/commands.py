"""The client's commands: ``npusim demo``, ``npusim bench`` and ``npusim serve``, registered through
``npusim.commands``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.services.cli import call

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        requests: int = typer.Option(200, "-n", "--requests", min=1, help="timed requests"),
        trace: Path = typer.Option(Path("trace.json"), help="Chrome/Perfetto trace to write"),
        width: int = typer.Option(64, help="input width (and height) of the demo CNN"),
    ) -> None:
        """Build a small CNN, compile it, run it, print latency, throughput and per-operator times."""
        from npusim.client import demo

        call(demo.run, requests=requests, trace=trace, width=width)

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
        from npusim.client import bench as bench_mod

        call(bench_mod.run, model=model, device=devices, workers=workers, batch=batch, workload=workload,
             duration=duration, queries=queries, warmup=warmup, in_flight=in_flight, output=output,
             trace_output=trace_output, compiler_config=compiler_config, json_out=json_out)

    @app.command()
    def serve(
        model_path: Optional[str] = typer.Option(None, help="the model to serve: .onnx, .enf or zoo:NAME"),
        model_name: Optional[str] = typer.Option(None, help="its name in the API (default: the file's stem)"),
        model_version: Optional[str] = typer.Option(None, help="its version (default 1)"),
        model_config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="furiosa-server's "
                                                    "model_config_list YAML, for several models"),
        host: str = typer.Option("127.0.0.1", help="address to listen on (default: this machine only)"),
        http_port: int = typer.Option(8080, min=0, max=65535, help="REST port (Open Inference Protocol v2)"),
        grpc_port: int = typer.Option(8081, min=0, max=65535, help="gRPC port (inference.GRPCInferenceService)"),
        npu_device: Optional[str] = typer.Option(None, help="device string of --model-path, e.g. npu0pe0"),
        worker_num: Optional[int] = typer.Option(None, min=1, help="workers of --model-path's session"),
        batch_size: Optional[int] = typer.Option(None, min=1, help="batch size of --model-path"),
        log_level: str = typer.Option("warning", help="uvicorn's log level"),
    ) -> None:
        """Serve models over the Open Inference Protocol v2 (REST and gRPC), as furiosa-server does, each on an
        npusim session."""
        from npusim.client.oip import serve as serve_mod

        call(serve_mod.run, model_path=model_path, model_name=model_name, model_version=model_version,
             model_config=model_config, host=host, http_port=http_port, grpc_port=grpc_port, npu_device=npu_device,
             worker_num=worker_num, batch_size=batch_size, log_level=log_level)
