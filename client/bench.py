"""``npusim bench``: the load test, like the SDK's ``furiosa-bench``.

It opens a model with ``worker_num`` workers, runs warm-up queries (not counted), then
queries for a duration or a count — one at a time (``latency`` workload) or with many in
flight (``throughput``) — and reports QPS, the latency distribution, each PE's utilisation
(from the daemons' counters), the CPU and NPU time per query, and the ideal
``1 / max(NPU / PEs, CPU / workers)`` next to what was measured: the law of the seed's
worker section, so a user sees which side limits the run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from npusim.client._engine import Engine, Result
from npusim.client._open import model_bytes
from npusim.client._profiler import profile
from npusim.services import __version__
from npusim.services.errors import ConfigError
from npusim.services.latency import latency_stats
from npusim.services.modelfile import model_source
from npusim.services.rates import device_rates, sample

__all__ = ["BenchConfig", "bench", "run"]

WORKLOADS = {"latency": "latency", "l": "latency", "throughput": "throughput", "t": "throughput"}


@dataclass
class BenchConfig:
    model: Any
    device: str | None = None
    workers: int = 1
    batch: int = 1
    workload: str = "throughput"
    duration_s: float = 0.0  # > 0: run this long; else ``queries``
    queries: int = 100
    warmup: int | None = None  # default: 2 per worker, at least 5
    in_flight: int | None = None  # throughput workload; default max(8, 2 × workers)
    compiler_config: dict[str, Any] | None = None
    seed: int = 0

    def check(self) -> None:
        self.workload = WORKLOADS.get(str(self.workload).lower(), "")
        if not self.workload:
            raise ConfigError("workload must be latency (L) or throughput (T)")
        for name in ("workers", "batch", "queries"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.duration_s < 0:
            raise ConfigError("duration must be >= 0 seconds (0: run --queries queries)")


@dataclass
class _Sample:
    latency_ns: int
    timing: dict[str, Any] = field(default_factory=dict)


def _inputs(engine: Engine, seed: int, n: int = 4) -> list[list[np.ndarray]]:
    """A few random input sets of the program's shapes and dtypes (images for uint8)."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        arrays = []
        for s in engine.program.inputs:
            dt = np.dtype(s.dtype)
            if dt.kind == "f":
                arrays.append(rng.standard_normal(s.shape).astype(dt))
            elif dt.kind in "iu":
                info = np.iinfo(dt)
                arrays.append(rng.integers(max(info.min, -128), min(info.max, 255) + 1, s.shape).astype(dt))
            else:
                arrays.append(np.zeros(s.shape, dt))
        sets.append(arrays)
    return sets


def _drive(engine: Engine, inputs: list[list[np.ndarray]], *, count: int, until: float | None, depth: int,
           tick: Any = None) -> list[_Sample]:
    """Keep ``depth`` queries in flight until ``count`` are done (or ``until`` passes); their samples."""
    samples: list[_Sample] = []
    if depth == 1:  # single stream: a caller that waits for each answer before the next query
        while len(samples) < count if until is None else time.monotonic() < until:
            t0 = time.perf_counter_ns()
            result = engine.run(inputs[len(samples) % len(inputs)])
            samples.append(_Sample(time.perf_counter_ns() - t0, result.timing))
            if tick is not None:
                tick()
        return samples
    errors: list[BaseException] = []
    window = threading.Semaphore(depth)  # a slot is given back once its query is recorded
    started = 0

    def finished(t0: int, fut: cf.Future[Result]) -> None:
        t1 = time.perf_counter_ns()
        err = fut.exception()
        if err is not None:
            errors.append(err)
        else:
            samples.append(_Sample(t1 - t0, fut.result().timing))
        if tick is not None:
            tick()
        window.release()

    while not errors:
        if (until is None and started >= count) or (until is not None and time.monotonic() >= until):
            break
        window.acquire()
        t0 = time.perf_counter_ns()
        fut = engine.submit(inputs[started % len(inputs)])
        started += 1
        fut.add_done_callback(lambda f, t0=t0: finished(t0, f))
    for _ in range(depth):  # every slot back: every query in flight has been recorded
        window.acquire()
    if errors:
        raise errors[0]
    return samples


def _pe_counters(engine: Engine) -> dict[str, Any]:
    """Counters of the daemons the session's PEs live on, keyed by device."""
    out = {}
    for o in engine.opened:
        s = sample(o.device, o.endpoint, timeout_s=5.0)
        out[o.device] = s
    return out


def _utilisation(engine: Engine, before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    util: dict[str, float] = {}
    for o in engine.opened:
        a, b = before.get(o.device), after.get(o.device)
        if a is None or b is None or a.counters is None or b.counters is None:
            continue
        rates = device_rates(a.counters, b.counters, b.t - a.t)
        cores = ["pe0", "pe1"] if o.pe == "pe0-1" else [o.pe]
        util[o.name] = round(sum(rates[c].utilization_pct for c in cores) / len(cores), 2)
    return util


def bench(cfg: BenchConfig, *, trace_file: Path | None = None, progress: bool = False,
          console: Console | None = None) -> dict[str, Any]:
    """Run the load test; every figure, as one dict (what ``-o`` writes)."""
    cfg.check()
    data = model_bytes(cfg.model)
    t_open = time.perf_counter()
    engine = Engine(data, device=cfg.device, worker_num=cfg.workers, batch_size=cfg.batch,
                    compiler_config=cfg.compiler_config, name="bench")
    try:
        open_s = time.perf_counter() - t_open
        inputs = _inputs(engine, cfg.seed)
        depth = 1 if cfg.workload == "latency" else (cfg.in_flight or max(8, 2 * cfg.workers))
        warmup = cfg.warmup if cfg.warmup is not None else max(5, 2 * cfg.workers)
        if warmup:
            _drive(engine, inputs, count=warmup, until=None, depth=depth)
        bar = Progress(TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), TextColumn("{task.completed}"),
                       TimeRemainingColumn(), console=console, transient=True, disable=not progress)
        with contextlib.ExitStack() as scope:
            if trace_file is not None:  # the file closes after the profiler wrote it
                scope.enter_context(profile(file=scope.enter_context(trace_file.open("w"))))
            scope.enter_context(bar)
            total = cfg.duration_s if cfg.duration_s > 0 else cfg.queries
            task = bar.add_task(cfg.workload, total=total)
            t_run0 = time.monotonic()

            def tick() -> None:
                if cfg.duration_s > 0:
                    bar.update(task, completed=min(total, time.monotonic() - t_run0))
                else:
                    bar.advance(task)

            before = _pe_counters(engine)
            t0 = time.perf_counter()
            until = time.monotonic() + cfg.duration_s if cfg.duration_s > 0 else None
            samples = _drive(engine, inputs, count=cfg.queries, until=until, depth=depth, tick=tick)
            wall = time.perf_counter() - t0
            after = _pe_counters(engine)
        return _result(cfg, engine, data, samples, wall, depth, warmup, open_s, _utilisation(engine, before, after))
    finally:
        engine.close()


def _result(cfg: BenchConfig, engine: Engine, data: bytes, samples: list[_Sample], wall: float, depth: int,
            warmup: int, open_s: float, util: dict[str, float]) -> dict[str, Any]:
    n = len(samples)
    if n == 0:
        raise ConfigError("no query finished within the measured time; run longer (--duration) or more "
                          "queries (-n)")
    npu_ns = float(np.mean([s.timing.get("exec_ns", 0) for s in samples]))
    device_ns = float(np.mean([s.timing.get("emulated_ns", 0) for s in samples]))
    cpu_ns = float(np.mean([s.timing.get("cpu_ns", 0) for s in samples]))
    replied_ns = float(np.mean([s.timing.get("replied_ns", 0) for s in samples]))
    host_bound = float(np.mean([bool(s.timing.get("host_bound")) for s in samples]))
    pes = len(engine.opened)
    # When the daemon's real computation outlasts the emulated chip, the host sets the pace:
    # the same law with the daemon's reply time in place of the NPU's.
    host_limit = max(replied_ns - (device_ns - npu_ns), npu_ns) / pes
    host_ideal = 1e9 / max(host_limit, cpu_ns / cfg.workers) if max(host_limit, cpu_ns) > 0 else math.inf
    limits = {"npu": npu_ns / pes, "cpu": cpu_ns / cfg.workers}
    bound = max(limits, key=lambda k: limits[k])
    ideal_qps = 1e9 / limits[bound] if limits[bound] > 0 else math.inf
    qps = n / wall if wall > 0 else 0.0
    return {
        "model_data": {"path": str(cfg.model) if isinstance(cfg.model, (str, Path)) else "<in memory>",
                       "md5": hashlib.md5(data).hexdigest()},  # noqa: S324 - an identifier, as furiosa-bench prints
        "npusim_version": __version__,
        "config": {"device": engine.device, "target": engine.program.target, "workers": cfg.workers,
                   "batch": cfg.batch, "workload": cfg.workload, "in_flight": depth, "warmup_queries": warmup,
                   "duration_s": cfg.duration_s, "open_s": round(open_s, 3)},
        "result": {
            "mode": cfg.workload.capitalize(), "queries": n, "total_run_time_us": wall * 1e6,
            "qps": qps, "samples_per_s": qps * cfg.batch,
            "latency": latency_stats([s.latency_ns for s in samples]),
            "npu_utilization_pct": util,
            "per_query": {"npu_exec_us": npu_ns / 1e3, "device_us": device_ns / 1e3, "cpu_us": cpu_ns / 1e3,
                          "daemon_reply_us": replied_ns / 1e3, "host_bound_share": host_bound},
            "ideal": {"qps": ideal_qps, "bound_by": bound, "law": "1 / max(NPU / PEs, CPU / workers)",
                      "npu_limit_qps": 1e9 / limits["npu"] if limits["npu"] else math.inf,
                      "cpu_limit_qps": 1e9 / limits["cpu"] if limits["cpu"] else math.inf},
            "ratio_to_ideal": qps / ideal_qps if ideal_qps not in (0, math.inf) else 0.0,
            "ideal_on_this_host": {"qps": host_ideal, "npu_term_us": host_limit * pes / 1e3,
                                   "note": "the law with the daemon's real compute time when it exceeds the chip's"},
        },
    }


def _print(res: dict[str, Any], console: Console) -> None:
    c, r = res["config"], res["result"]
    if c["workload"] == "latency":
        console.print("This benchmark was executed with latency-workload which prioritizes latency of individual "
                      "queries over throughput.")
    else:
        console.print(f"This benchmark was executed with throughput-workload ({c['in_flight']} queries in flight) "
                      "which prioritizes throughput over the latency of individual queries.")
    console.print(f"{r['queries']} queries executed with batch size {c['batch']} on {c['device']} "
                  f"({c['workers']} worker{'s' if c['workers'] > 1 else ''}, {c['warmup_queries']} warm-up queries "
                  "not counted)")
    console.print(f"QPS(Throughput): {r['qps']:.2f}/s   ({r['samples_per_s']:.2f} samples/s)")
    lat = r["latency"]
    t = Table(title="Per-query latency (µs)")
    for col in ("min", "mean", "max", "p50", "p90", "p95", "p99", "p99.9"):
        t.add_column(col, justify="right")
    t.add_row(*(f"{lat[k]:.1f}" for k in ("min_us", "mean_us", "max_us", "p50_us", "p90_us", "p95_us", "p99_us",
                                          "p99.9_us")))
    console.print(t)
    pq, ideal = r["per_query"], r["ideal"]
    console.print(f"per query: NPU execution {pq['npu_exec_us']:.1f} µs (device incl. DMA and queue "
                  f"{pq['device_us']:.1f} µs), CPU in the worker {pq['cpu_us']:.1f} µs; host-bound "
                  f"{100 * pq['host_bound_share']:.0f}%")
    util = ", ".join(f"{pe} {u:.1f}%" for pe, u in r["npu_utilization_pct"].items()) or "n/a"
    console.print(f"NPU utilisation: {util}")
    console.print(f"ideal {ideal['law']} = {ideal['qps']:.2f}/s ({ideal['bound_by']}-bound); measured "
                  f"{r['qps']:.2f}/s = {100 * r['ratio_to_ideal']:.1f}% of it")
    if pq["host_bound_share"] > 0.5:
        host = r["ideal_on_this_host"]
        console.print(f"host-bound: this host computes a job in {host['npu_term_us']:.0f} µs where the chip needs "
                      f"{pq['npu_exec_us']:.1f} µs, so the host sets the pace (the same law with that time: "
                      f"{host['qps']:.2f}/s); run the daemon with --timing-only for the chip's figures")
    console.print("[dim]live figures include this emulator's own transport (ZeroMQ hops and copies: about a "
                  "millisecond a request, more for large tensors), which the chip does not have; for chip-scale "
                  "answers and sweeps in seconds use `npusim plan` (docs/plan.md)[/dim]")


def run(*, model: str, device: str | None, workers: int, batch: int, workload: str, duration: float, queries: int,
        warmup: int | None, in_flight: int | None, output: Path | None, trace_output: Path | None,
        compiler_config: Path | None, json_out: bool) -> None:
    """The CLI body of ``npusim bench``."""
    config = None
    if compiler_config is not None:
        import yaml  # JSON is YAML too

        config = yaml.safe_load(compiler_config.read_text()) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{compiler_config} must hold a mapping of compiler_config keys")
    console = Console(stderr=json_out)
    cfg = BenchConfig(model_source(model).data, device=device, workers=workers, batch=batch, workload=workload,
                      duration_s=duration, queries=queries, warmup=warmup, in_flight=in_flight,
                      compiler_config=config)
    res = bench(cfg, trace_file=trace_output, progress=not json_out and console.is_terminal, console=console)
    if output is not None:
        output.write_text(json.dumps(res, indent=2) + "\n")
    if json_out:
        print(json.dumps(res))
        return
    _print(res, console)
    if output is not None:
        console.print(f"wrote {output}")
    if trace_output is not None:
        console.print(f"wrote the Chrome/Perfetto trace {trace_output}")
