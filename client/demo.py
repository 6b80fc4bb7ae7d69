"""``npusim demo``: the whole path on a small CNN, from nothing to a trace file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from npusim.client._profiler import profile
from npusim.client._session import create
from npusim.client._stack import get_stack, shutdown_embedded
from npusim.services.zoo import small_cnn

__all__ = ["run"]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run(*, requests: int = 200, trace: Path = Path("trace.json"), width: int = 64) -> None:
    console = Console()
    t0 = time.perf_counter()
    stack = get_stack()
    where = {"embedded": "started a private stack (stopped at exit)", "run-dir": "using the running stack",
             "env": "using the stack named by NPUSIM_* variables"}[stack.source]
    console.print(f"[bold]npusim demo[/bold] — {where}: compiler {stack.compiler}, devices "
                  f"{', '.join(f'{k}={v}' for k, v in stack.daemons.items())} ({time.perf_counter() - t0:.1f} s)")
    model = small_cnn(height=width, width=width)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, width, width)).astype(np.float32)
    t0 = time.perf_counter()
    sess = create(model)
    try:
        info = sess.compile_info
        console.print(f"compiled small_cnn 1×3×{width}×{width} for {sess.program.target} in "
                      f"{time.perf_counter() - t0:.2f} s{' (from cache)' if info.get('cached') else ''}; opened on "
                      f"{sess.device}; CPU operators: {', '.join(info.get('cpu_ops', [])) or 'none'}")
        est = sess.program.estimate
        console.print(f"cost model: {est['macs'] / 1e6:.1f} MMAC, NPU execution {est['npu_ns'] / 1e3:.1f} µs "
                      f"+ {est['job_overhead_ns'] / 1e3:.1f} µs job overhead")
        reference = _fp32(model, x)
        for _ in range(10):
            y = sess.run(x)[0]
        cos = float(y.ravel() @ reference.ravel() / (np.linalg.norm(y) * np.linalg.norm(reference)))
        lat, emulated, host_bound = [], [], 0
        t_start = time.perf_counter()
        for _ in range(requests):
            t = time.perf_counter()
            sess.run(x)
            lat.append((time.perf_counter() - t) * 1e6)
            emulated.append(sess.last_timing.get("emulated_ns", 0) / 1e3)
            host_bound += bool(sess.last_timing.get("host_bound"))
        wall = time.perf_counter() - t_start
        table = Table(title=f"{requests} requests, one after another (worker_num=1)")
        for col in ("metric", "p50", "p90", "p99", "mean"):
            table.add_column(col, justify="right")
        table.add_row("end-to-end latency (µs)", *(f"{_pct(lat, q):.0f}" for q in (50, 90, 99)),
                      f"{np.mean(lat):.0f}")
        table.add_row("emulated device time (µs)", *(f"{_pct(emulated, q):.1f}" for q in (50, 90, 99)),
                      f"{np.mean(emulated):.1f}")
        console.print(table)
        console.print(f"throughput: {requests / wall:.0f} inferences/s   int8 vs fp32 cosine: {cos:.4f}")
        if host_bound:
            console.print(f"[yellow]host-bound: {host_bound}/{requests} jobs took longer to compute on this host "
                          "than the emulated chip needs; run the daemon with --timing-only for chip-faithful "
                          "wall-clock timing[/yellow]")
        with open(trace, "w") as f, profile(file=f) as prof:
            for _ in range(20):
                sess.run(x)
        ops = Table(title="per-operator time (20 profiled requests)")
        for col in ("operator", "runs on", "count", "mean µs", "p50 µs", "p99 µs"):
            ops.add_column(col, justify="right" if col not in ("operator", "runs on") else "left")
        for r in prof.operator_table():
            ops.add_row(r["name"], r["where"], str(r["count"]), f"{r['mean_us']:.1f}", f"{r['p50_us']:.1f}",
                        f"{r['p99_us']:.1f}")
        console.print(ops)
        console.print(f"wrote {trace} — open it at https://ui.perfetto.dev (or chrome://tracing)")
    finally:
        sess.close()
        if stack.source == "embedded":
            shutdown_embedded()


def _fp32(model: object, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return s.run(None, {"input": x})[0]
