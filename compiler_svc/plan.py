"""``npusim plan``: the whole inference pipeline in virtual time, swept over its knobs.

A live run on this emulator pays its own ZeroMQ transport on every request, which the chip
does not have and which is larger than a small model's whole NPU time; so live answers about
worker counts, queue depths or PE modes come out distorted unless the device is stretched with
``--time-scale``. ``plan`` answers them at the chip's own speed instead: the program's NPU
stages on the daemon's engine, its host operators at a host profile's cost (``this``: measured
here with the real kernels, once, then cached; ``mlperf``: the published figures' host), the
runtime's per-request overhead, workers, queues and host cores, all on a virtual clock
(:mod:`npusim.services.sim`). A configuration of 10,000 requests takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from npusim.compiler_svc.cache import default_cache_dir
from npusim.compiler_svc.estimate import compile_programs
from npusim.compiler_svc.pipeline import MAX_BATCH
from npusim.services.devices import AnyPe, assign_pes, parse_devices, target_of
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.hostprofile import HostProfile, host_profile
from npusim.services.htmlreport import Section, Table, page
from npusim.services.modelfile import model_source
from npusim.services.plots import sweep_png
from npusim.services.program import Program, is_program
from npusim.services.sim import Pipeline, Scenario, SessionSpec, combined, simulate
from npusim.services.sim.arrivals import Arrivals, closed, constant, from_file, poisson
from npusim.services.sim.capacity import Slo, capacity, parse_slo

__all__ = ["PlanConfig", "plan", "plan_cmd", "plan_page", "host_costs"]

StepCosts = Callable[[Program], list[float | None]]
MAX_DEVICES = 64
"""The most devices the capacity finder adds before it says the target cannot be met."""


@dataclass(frozen=True)
class PlanConfig:
    devices: str = "warboy(2)*1"
    workers: tuple[int, ...] = (1,)
    batch: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = ()
    rate: tuple[float, ...] = ()
    rate_file: Path | None = None
    arrivals: str = "poisson"  # for --rate: poisson or constant
    host: str = "mlperf"
    host_cores: int | None = None
    host_scale: float = 1.0
    time_scale: float = 1.0
    requests: int = 10_000
    warmup: int | None = None
    duration_s: float | None = None
    input_queue: int = 1024
    output_queue: int = 1024
    consumer_us: float = 0.0  # the caller's own time per answer, on one thread
    sessions: int = 1  # clients, each opening --devices with its own workers, queue and load
    slo: str | None = None
    target_rate: float | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("workers", "batch", "concurrency"):
            for v in getattr(self, name):
                if not isinstance(v, int) or v < 1:
                    raise ConfigError(f"--{name} {v!r}: must be a positive integer")
        for b in self.batch:
            if b > MAX_BATCH:
                raise ConfigError(f"--batch {b}: must be from 1 to {MAX_BATCH}")
        if sum(bool(x) for x in (self.concurrency, self.rate, self.rate_file)) > 1:
            raise ConfigError("give one load: --concurrency (closed loop), --rate or --rate-file (open loop)")
        if self.arrivals not in ("poisson", "constant"):
            raise ConfigError(f"--arrivals {self.arrivals!r}: poisson or constant")
        if not self.time_scale > 0 or not self.host_scale > 0:
            raise ConfigError("--time-scale and --host-scale must be positive")
        if self.target_rate is not None and self.slo is None:
            raise ConfigError("--target-rate needs --slo: the devices needed are those that serve the rate within it")
        if self.requests < 1:
            raise ConfigError("-n must be at least 1")
        if self.sessions < 1:
            raise ConfigError("--sessions must be at least 1")
        if self.consumer_us < 0:
            raise ConfigError("--consumer-us cannot be negative")
        if self.sessions > 1 and (self.slo is not None or self.target_rate is not None):
            raise ConfigError("--slo and --target-rate plan one session; leave out --sessions (or plan one "
                              "session with more devices)")


# -- host costs ------------------------------------------------------------------------------------
def host_costs(program: Program, profile: HostProfile) -> list[float | None] | None:
    """Each step's host cost on the profile (None: host steps outside the timed path). The ``this``
    profile measures the real kernels once per program and machine and keeps the answer."""
    if profile.step_costs is None:
        return None
    blob = program.to_bytes()
    key = hashlib.sha256(blob + platform.processor().encode() + platform.machine().encode()
                         + str(os.cpu_count()).encode()).hexdigest()
    path = default_cache_dir().parent / "host-costs" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text())
        if isinstance(cached, list) and len(cached) == len(program.steps):
            return cached
    costs = profile.step_costs(program)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(costs))
        tmp.replace(path)
    return costs


# -- the sweep -------------------------------------------------------------------------------------
def _loads(cfg: PlanConfig, workers: int, pes: int, seed: int) -> list[Arrivals]:
    if cfg.rate_file is not None:
        return [from_file(cfg.rate_file)]
    if cfg.rate:
        return [poisson(r, seed) if cfg.arrivals == "poisson" else constant(r) for r in cfg.rate]
    if cfg.concurrency:
        return [closed(n) for n in cfg.concurrency]
    return [closed(max(8, 2 * workers, 2 * pes))]  # bench's throughput workload


def session_pes(devices: str, sessions: int) -> list[tuple[tuple[int, str], ...]]:
    """The PEs each of ``sessions`` clients opening ``devices`` gets, in the order they open them:
    N sessions need N times the PEs, given out device by device."""
    specs = parse_devices(devices)
    if sessions == 1:
        return [tuple(assign_pes(specs))]
    if any(not isinstance(s, AnyPe) for s in specs):
        raise ConfigError(f"--sessions {sessions}: named PEs ({devices!r}) belong to one session; use "
                          "warboy(X)*Y so each session gets its own")
    pes = assign_pes(parse_devices(_scaled(devices, sessions)))
    per = len(pes) // sessions
    return [tuple(pes[k * per:(k + 1) * per]) for k in range(sessions)]


def _scaled(devices: str, k: int) -> str:
    """``warboy(X)*Y`` with Y multiplied by k; named PEs cannot grow."""
    specs = parse_devices(devices)
    if any(not isinstance(s, AnyPe) for s in specs):
        raise ConfigError(f"--target-rate adds devices, which needs warboy(X)*Y entries, not named PEs ({devices!r})")
    return ",".join(f"warboy({s.pes})*{s.count * k}" for s in specs if isinstance(s, AnyPe))


def plan(cfg: PlanConfig, data: bytes, *, step_costs: StepCosts | None = None,
         status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every configuration of the sweep, simulated; one dict of all figures (what ``--json`` prints)."""
    cfg.check()
    say = status or (lambda _: None)
    specs = parse_devices(cfg.devices)
    target = target_of(specs)
    per_session = session_pes(cfg.devices, cfg.sessions)
    pes = per_session[0]
    profile = host_profile(cfg.host, step_costs=step_costs)
    cores = cfg.host_cores or profile.cores
    notes: list[str] = []
    if is_program(data):
        program = Program.from_bytes(data)
        if program.target != target:
            raise InvalidInput(f"the program is compiled for {program.target}; --devices {cfg.devices!r} needs "
                               f"{target}: plan the .onnx model, or use matching devices")
        if set(cfg.batch) - {program.batch_size, 1} or (cfg.batch != (1,) and program.batch_size not in cfg.batch):
            raise InvalidInput(f"the program is compiled for batch {program.batch_size}; plan the .onnx model to "
                               "sweep --batch")
        programs = [program]
    else:
        say("compiling …")
        programs, notes = compile_programs(data, [target], list(dict.fromkeys(cfg.batch)))
    pipelines = []
    for p in programs:
        say(f"host costs for batch {p.batch_size} …")
        pipelines.append(Pipeline.of(p, host_costs(p, profile), runtime_overhead_ns=profile.runtime_overhead_ns,
                                     time_scale=cfg.time_scale, host_scale=cfg.host_scale))
    duration = None if cfg.duration_s is None else int(cfg.duration_s * 1e9)
    consumer = int(cfg.consumer_us * 1e3)
    configs: list[dict[str, Any]] = []
    capacities: list[dict[str, Any]] = []
    slo = parse_slo(cfg.slo) if cfg.slo else None
    for pipeline in pipelines:
        for w in cfg.workers:
            warmup = cfg.warmup if cfg.warmup is not None else min(cfg.requests, max(2 * w, 5))
            per_seed = [_loads(cfg, w, len(pes), cfg.seed + k) for k in range(cfg.sessions)]
            for loads in zip(*per_seed):  # one load per session; Poisson ones on seeds seed, seed + 1, …
                load = loads[0]
                say(f"batch {pipeline.batch}, {w} workers, {load.describe()} …")
                sc = Scenario(tuple(SessionSpec(pipeline, p, w, ld, cfg.input_queue, cfg.output_queue, consumer)
                                    for p, ld in zip(per_session, loads)), cores, cfg.requests, warmup, duration)
                r = combined(simulate(sc))
                configs.append(_config(pipeline, w, load, r, slo))
            if slo is not None:
                say(f"capacity within {slo}: batch {pipeline.batch}, {w} workers …")
                sc = Scenario((SessionSpec(pipeline, pes, w, closed(1), cfg.input_queue, cfg.output_queue, consumer),),
                              cores, cfg.requests, warmup)
                c = capacity(sc, slo, seed=cfg.seed)
                capacities.append({"batch": pipeline.batch, "workers": w, "rate_per_s": c["rate_per_s"],
                                   "samples_per_s": c["rate_per_s"] * pipeline.batch,
                                   "saturated_per_s": c["saturated_per_s"],
                                   "latency_us": _latency(c["result"]) if c["rate_per_s"] else None})
    report: dict[str, Any] = {
        "model": programs[0].meta.get("model", ""), "devices": cfg.devices,
        "pes": [f"npu{d}{pe}" for d, pe in pes], "target": target, "sessions": cfg.sessions,
        "session_pes": [[f"npu{d}{pe}" for d, pe in p] for p in per_session],
        "host": {"name": profile.name, "description": profile.description, "cores": cores,
                 "runtime_overhead_ns": profile.runtime_overhead_ns, "scale": cfg.host_scale},
        "time_scale": cfg.time_scale, "requests": cfg.requests, "seed": cfg.seed, "notes": notes,
        "configs": configs,
    }
    if slo is not None:
        report["slo"] = str(slo)
        report["capacity"] = capacities
    if cfg.target_rate is not None and slo is not None:
        report["devices_needed"] = _devices_needed(cfg, data, step_costs, slo, capacities)
    return report


def _latency(r: dict[str, Any]) -> dict[str, float]:
    lat = r["latency"]
    return {"p50": lat["p50_us"], "p90": lat["p90_us"], "p99": lat["p99_us"], "p999": lat["p99.9_us"]}


def _config(pipeline: Pipeline, workers: int, load: Arrivals, r: dict[str, Any], slo: Slo | None) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": pipeline.batch, "workers": workers, "arrivals": load.kind}
    if load.closed:
        out["in_flight"] = load.in_flight
    else:
        out["rate_per_s"] = load.rate_per_s
    out.update(throughput_per_s=r["samples_per_s"], qps=r["qps"], latency_us=_latency(r))
    out.update({k: r[k] for k in ("latency", "queue_wait", "npu_utilization_pct", "pcie_utilization_pct",
                                  "host_cpu_utilization_pct", "worker_utilization_pct", "per_query", "bound_by",
                                  "queries", "simulated_s")})
    if "sessions" in r:
        out["sessions"] = [{"throughput_per_s": e["samples_per_s"], "latency_us": _latency(e), "bound_by": e["bound_by"]}
                           for e in r["sessions"]]
    if slo is not None:
        out["meets_slo"] = slo.met(r)
    return out


def _devices_needed(cfg: PlanConfig, data: bytes, step_costs: StepCosts | None, slo: Slo,
                    capacities: list[dict[str, Any]]) -> dict[str, Any]:
    """The fewest devices (the workers growing with them) on which the best configuration serves
    ``target_rate`` within the SLO: doubling, then bisection; it stops early when more devices
    no longer add capacity (the host is then the limit)."""
    assert cfg.target_rate is not None
    best = max(capacities, key=lambda c: c["samples_per_s"])
    seen: dict[int, float] = {1: best["samples_per_s"]}

    def cap(k: int) -> float:
        if k not in seen:
            sub = replace(cfg, devices=_scaled(cfg.devices, k), workers=(best["workers"] * k,), batch=(best["batch"],),
                          concurrency=(), rate=(), rate_file=None, target_rate=None)
            seen[k] = plan(sub, data, step_costs=step_costs)["capacity"][0]["samples_per_s"]
        return seen[k]

    lo, hi = 1, 1
    while cap(hi) < cfg.target_rate:
        if hi >= MAX_DEVICES:
            return {"target_per_s": cfg.target_rate, "devices": None, "count": None,
                    "note": f"{MAX_DEVICES} devices do not serve it within {slo}"}
        lo, hi = hi, min(2 * hi, MAX_DEVICES)
        if cap(hi) < 1.05 * cap(lo):
            return {"target_per_s": cfg.target_rate, "devices": None, "count": None,
                    "note": f"more devices stop adding capacity at {cap(lo):,.0f} samples/s ({lo} → {hi} devices): "
                            "the host, not the NPU, is the limit (try --host-cores or fewer host operators)"}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cap(mid) < cfg.target_rate else (lo, mid)
    k = 1 if cap(1) >= cfg.target_rate else hi
    return {"target_per_s": cfg.target_rate, "devices": _scaled(cfg.devices, k), "count": k,
            "workers": best["workers"] * k, "batch": best["batch"], "capacity_per_s": cap(k)}


# -- the command -----------------------------------------------------------------------------------
def plan_cmd(cfg: PlanConfig, *, model: str, step_costs: StepCosts | None = None, json_out: bool = False,
             plot: Path | None = None, report_path: Path | None = None) -> dict:
    from rich.console import Console

    given = model_source(model)
    err = Console(stderr=True)
    with contextlib.nullcontext() if json_out or not err.is_terminal else err.status("plan …") as st:
        report = plan(cfg, given.data, step_costs=step_costs,
                      status=(lambda m: st.update(f"[bold]plan[/bold]: {m}")) if st is not None else None)
    report["model"] = report["model"] or given.name
    wrote = []
    png = sweep_png(report["configs"], _title(report)) if plot is not None or report_path is not None else None
    if plot is not None and png is not None:
        plot.write_bytes(png)
        wrote.append(f"wrote the plot {plot}")
    if report_path is not None:
        report_path.write_text(plan_page(report, png))
        wrote.append(f"wrote the report {report_path}")
    if json_out:
        print(json.dumps(report, default=float))
    else:
        _print(report)
    for line in wrote:
        err.print(line)
    return report


def _where(report: dict[str, Any]) -> str:
    if report["sessions"] == 1:
        return f"{report['devices']} ({', '.join(report['pes'])})"
    return f"{report['sessions']} sessions × {report['devices']} (" + "; ".join(
        ", ".join(p) for p in report["session_pes"]) + ")"


def _title(report: dict[str, Any]) -> str:
    return (f"{report['model']} on {_where(report)}, host {report['host']['name']}, time scale "
            f"{report['time_scale']:g} (virtual time)")


def _load(c: dict[str, Any]) -> str:
    return f"{c['in_flight']} in flight" if "in_flight" in c else f"{c['arrivals']} {c['rate_per_s']:,.0f}/s"


def plan_page(report: dict[str, Any], png: bytes | None = None) -> str:
    """The report as one self-contained HTML page: the sweep's plots and table, the capacity answer
    (``png``: the sweep plot when the caller drew it already for --plot)."""
    host = report["host"]
    rows = []
    for c in report["configs"]:
        lat = c["latency_us"]
        rows.append((c["batch"], c["workers"], _load(c), f"{c['throughput_per_s']:,.0f}", f"{lat['p50']:,.0f}",
                     f"{lat['p90']:,.0f}", f"{lat['p99']:,.0f}", f"{lat['p999']:,.0f}",
                     f"{max(c['npu_utilization_pct'].values(), default=0.0):.0f}%",
                     f"{c['host_cpu_utilization_pct']:.0f}%", f"{c['queue_wait']['p50_us']:,.0f}", c["bound_by"])
                    + ((("yes" if c["meets_slo"] else "no"),) if "meets_slo" in c else ()))
    cols = ["batch", "workers", "load", "samples/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "NPU util",
            "host CPU", "queue wait p50 µs", "bound by"] + ([f"meets {report['slo']}"] if "slo" in report else [])
    sections = [Section("Sweep", [f"{report['requests']:,} requests per configuration, simulated in virtual time. "
                                  f"Host profile {host['name']}: {host['description']}; {host['cores']} cores; "
                                  f"the runtime's own overhead {host['runtime_overhead_ns'] / 1e3:,.0f} µs per request."],
                        [Table(cols, rows, left=("load", "bound by"))],
                        [("throughput and latency against each swept knob",
                          png or sweep_png(report["configs"], _title(report)))])]
    if "capacity" in report:
        cap = Section(f"Capacity within {report['slo']}")
        cap.tables.append(Table(["batch", "workers", "requests/s", "samples/s", "saturated /s", "p99 µs"], [
            (c["batch"], c["workers"], f"{c['rate_per_s']:,.0f}", f"{c['samples_per_s']:,.0f}",
             f"{c['saturated_per_s']:,.0f}", f"{c['latency_us']['p99']:,.0f}" if c["latency_us"] else "-")
            for c in report["capacity"]]))
        need = report.get("devices_needed")
        if need:
            cap.paragraphs.append(
                f"{need['target_per_s']:,.0f} samples/s needs {need['count']} × {report['devices']} "
                f"({need['devices']}), {need['workers']} workers, batch {need['batch']}: "
                f"{need['capacity_per_s']:,.0f} samples/s" if need.get("count")
                else f"{need['target_per_s']:,.0f} samples/s: {need['note']}")
        sections.append(cap)
    sections.append(Section("What this does not include", [
        "plan times the chip and the runtime's per-request overhead, not this emulator's ZeroMQ transport: a live "
        "`npusim bench` at --time-scale 1 adds about a millisecond per request, and about half a millisecond per MB "
        "of tensors, on top. Stretch live runs with "
        "--time-scale to compare them (benchmarks/plan_vs_live.py)."] + list(report["notes"])))
    return page(f"npusim plan: {report['model']}", _title(report), sections)


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 150)
    host = report["host"]
    out.print(f"[bold]{report['model']}[/bold] on {_where(report)}, host "
              f"[bold]{host['name']}[/bold] ({host['cores']} cores"
              + (f", host ×{host['scale']:g}" if host["scale"] != 1 else "")
              + f"), time scale {report['time_scale']:g}: {report['requests']:,} requests per configuration"
              + (" and session" if report["sessions"] > 1 else "") + ", in virtual time")
    if report["sessions"] > 1:
        out.print(f"{report['sessions']} sessions, each with the workers and the load of a row; the figures are "
                  "all sessions together (samples/s summed, latency over every request)")
    t = Table(title="per configuration (latency in µs)")
    for col in ("batch", "workers", "load", "samples/s", "p50", "p90", "p99", "p99.9", "NPU util", "host CPU",
                "workers busy", "queue wait p50", "bound by"):
        t.add_column(col, justify="left" if col in ("load", "bound by") else "right")
    for c in report["configs"]:
        load = _load(c)
        lat = c["latency_us"]
        util = max(c["npu_utilization_pct"].values(), default=0.0)
        slo = "" if "meets_slo" not in c else (" ✓" if c["meets_slo"] else " ✗")
        t.add_row(str(c["batch"]), str(c["workers"]), load, f"{c['throughput_per_s']:,.0f}", f"{lat['p50']:,.0f}",
                  f"{lat['p90']:,.0f}", f"{lat['p99']:,.0f}{slo}", f"{lat['p999']:,.0f}", f"{util:.0f}%",
                  f"{c['host_cpu_utilization_pct']:.0f}%", f"{c['worker_utilization_pct']:.0f}%",
                  f"{c['queue_wait']['p50_us']:,.0f}", c["bound_by"])
    out.print(t)
    for c in report.get("capacity", []):
        if c["rate_per_s"]:
            out.print(f"capacity within {report['slo']}: batch {c['batch']}, {c['workers']} workers serve "
                      f"{c['rate_per_s']:,.0f} requests/s ({c['samples_per_s']:,.0f} samples/s; saturated "
                      f"{c['saturated_per_s']:,.0f}/s), p99 {c['latency_us']['p99']:,.0f} µs")
        else:
            out.print(f"capacity within {report['slo']}: batch {c['batch']}, {c['workers']} workers: not even a trickle "
                      "of requests meets it")
    need = report.get("devices_needed")
    if need:
        if need.get("count"):
            out.print(f"{need['target_per_s']:,.0f} samples/s within {report['slo']} needs {need['count']} × "
                      f"{report['devices']} ({need['devices']}) with {need['workers']} workers, batch {need['batch']}: "
                      f"{need['capacity_per_s']:,.0f} samples/s")
        else:
            out.print(f"{need['target_per_s']:,.0f} samples/s: {need['note']}")
    out.print(f"[dim]plan times the chip and the runtime's per-request overhead "
              f"({host['runtime_overhead_ns'] / 1e3:,.0f} µs, host profile {host['name']}), not this emulator's "
              "ZeroMQ transport: a live `npusim bench` at --time-scale 1 adds about a millisecond per request, and "
              "about half a millisecond per MB of tensors, on top (docs/plan.md). Stretch live runs with "
              "--time-scale to compare them.[/dim]")
    for note in report["notes"]:
        out.print(f"[yellow]note:[/yellow] {note}")
