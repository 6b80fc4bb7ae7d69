"""``npusim estimate``: what a model will cost on the chip, end to end, without a daemon.

Per operator it shows the cost model's records (compute vs memory cycles, what bounds it, how
well it fills the MAC array, the DRAM bytes it streams); per program, the NPU and DMA time;
per PE mode and batch size, the single-stream latency and offline throughput that
:mod:`npusim.services.timing` predicts — the same engine the daemon schedules jobs with, so the
prediction and a timing-only daemon run agree by construction.

A latency is reported end to end for a host profile (:mod:`npusim.services.hostprofile`): the
runtime's per-query overhead + host operators before the NPU + H2D + device + D2H + host
operators after, each term on its own; ``device_latency_ns`` is the device path alone. The
default profile, ``mlperf``, is how the chip's published figures were measured.

A float ``.onnx`` is optimised, calibrated on one random sample and quantised *once*
(quantisation is most of a compile and depends on neither target nor batch), then compiled
per target and batch with :func:`npusim.compiler_svc.pipeline.compile_model`. With ``--hw`` every
NPU stage is re-costed on a what-if :class:`npusim.services.hw.Hardware`: the partition does not
depend on the hardware, only the cost model and the PCIe transfers do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npusim.compiler_svc.calibrate import CalibrationMethod, Calibrator, random_samples
from npusim.compiler_svc.loader import load_model
from npusim.compiler_svc.passes import optimize_model
from npusim.compiler_svc.pipeline import MAX_BATCH, CompileOptions, compile_model
from npusim.compiler_svc.quantize import is_quantized, quantize
from npusim.services.cost import recost_program
from npusim.services.cost.memory import sram_summary
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.hostprofile import HostProfile, host_profile
from npusim.services.hw import TARGETS, WARBOY, Hardware, TimingParams, timing_params, with_overrides
from npusim.services.modelfile import model_source
from npusim.services.program import NpuStage, NpuStep, Program, is_program
from npusim.services.timing import StageTiming, single_stream, throughput

__all__ = ["CALIBRATION_SAMPLES", "DEFAULT_BATCHES", "MODES", "ProgramEstimate", "compile_programs", "estimate_cmd",
           "estimate_program", "host_terms", "merge", "stage_timing"]

MODES: dict[str, dict[str, list[str]]] = {
    "warboy": {"pe0": ["pe0"], "pe0+pe1": ["pe0", "pe1"]},
    "warboy-2pe": {"pe0-1": ["pe0-1"]},
}
"""The PE modes a program of each target can run in (a warboy program cannot open on pe0-1)."""
DEFAULT_BATCHES = (1, 8)
CALIBRATION_SAMPLES = 1
"""Random calibration samples: the ranges change the int8 values, never the cost."""


# -- re-costing and timing ------------------------------------------------------------------------
def stage_timing(stage: NpuStage, estimate: dict[str, Any], hw: Hardware) -> StageTiming:
    """Per-job constants as the daemon computes them at OPEN (time scale 1)."""
    return StageTiming.for_stage(stage, hw, estimate=estimate)


def merge(timings: list[StageTiming]) -> StageTiming:
    """A multi-stage program as one job (sums): the throughput of a PE kept busy with all of a
    sample's stages. Host CPU steps between the stages are not counted."""
    if len(timings) == 1:
        return timings[0]
    return StageTiming(*(sum(getattr(t, f.name) for t in timings) for f in dataclasses.fields(StageTiming)))


def host_terms(program: Program, step_ns: list[float | None] | None) -> dict[str, float]:
    """Host time before the first NPU step, between NPU steps and after the last (ns)."""
    terms = {"host_pre_ns": 0.0, "host_between_ns": 0.0, "host_post_ns": 0.0}
    if step_ns is None:
        return terms
    npu = [k for k, st in enumerate(program.steps) if isinstance(st, NpuStep)]
    first, last = (npu[0], npu[-1]) if npu else (len(program.steps), len(program.steps))
    for k, ns in enumerate(step_ns):
        if ns is None:
            continue
        key = "host_pre_ns" if k < first else "host_post_ns" if k > last else "host_between_ns"
        terms[key] += ns
    return terms


@dataclass
class ProgramEstimate:
    """One compiled program's costs and predictions, ready to print or dump as JSON."""

    target: str
    batch_size: int
    stages: list[dict[str, Any]]
    modes: dict[str, dict[str, Any]]
    host: str = "mlperf"

    @property
    def npu_ns(self) -> float:
        return sum(s["estimate"].get("npu_ns", 0.0) for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        t = [s["timing"] for s in self.stages]
        return {
            "target": self.target, "batch_size": self.batch_size, "npu_stages": len(self.stages),
            "npu_ns": self.npu_ns,
            "job_overhead_ns": sum(s["estimate"].get("job_overhead_ns", 0.0) for s in self.stages),
            "exec_ns": sum(x["exec_ns"] for x in t), "exec_shared_ns": sum(x["exec_shared_ns"] for x in t),
            "dma": {"h2d_ns": sum(x["h2d_ns"] for x in t), "d2h_ns": sum(x["d2h_ns"] for x in t),
                    "h2d_bytes": sum(x["in_bytes"] for x in t), "d2h_bytes": sum(x["out_bytes"] for x in t)},
            "fits_sram": all(s["estimate"].get("fits_sram", True) for s in self.stages),
            "host": self.host, "modes": self.modes, "stages": self.stages,
        }


def estimate_program(program: Program, hw: Hardware | None = None, *, params: TimingParams | None = None,
                     host: HostProfile | None = None) -> ProgramEstimate:
    """Costs and predictions of ``program``: with ``hw`` or ``params``, every stage is re-costed;
    latencies are end to end on ``host`` (default: the ``mlperf`` profile)."""
    chip = hw or WARBOY
    profile = host or host_profile("mlperf", params)
    stages, timings = [], []
    fresh = hw is not None or params is not None
    costs = recost_program(program, chip, params) if fresh else [(s.ops, s.estimate) for s in program.stages]
    for k, (stage, (ops, est)) in enumerate(zip(program.stages, costs)):
        st = stage_timing(stage, est, chip)
        timings.append(st)
        stages.append({"index": k, "ops": ops, "estimate": est, "timing": dataclasses.asdict(st)})
    terms = host_terms(program, profile.step_costs(program) if profile.step_costs else None)
    host_ns = sum(terms.values())
    job = merge(timings) if timings else None
    modes: dict[str, dict[str, Any]] = {}
    for mode, pes in MODES.get(program.target, {}).items():
        device = sum(single_stream(pes[0], st) for st in timings) if len(pes) == 1 and timings else None
        rate = throughput(pes, job, program.batch_size) if job is not None else None
        e2e = None if device is None else profile.runtime_overhead_ns + host_ns + device
        modes[mode] = {
            "pes": pes, "latency_ns": e2e, "device_latency_ns": device, "throughput_per_s": rate,
            "end_to_end": None if device is None else {
                "host": profile.name, "runtime_ns": profile.runtime_overhead_ns, **terms,
                "h2d_ns": sum(t.h2d_ns for t in timings), "exec_ns": sum(t.exec_ns for t in timings),
                "d2h_ns": sum(t.d2h_ns for t in timings)},
            # one worker turning queries around: the runtime's overhead and the host operators
            "host_bound_per_s": (program.batch_size * 1e9 / (profile.runtime_overhead_ns + host_ns)
                                 if profile.times_host_steps and profile.runtime_overhead_ns + host_ns else None),
        }
    return ProgramEstimate(program.target, program.batch_size, stages, modes, profile.name)


# -- compiling ------------------------------------------------------------------------------------
def _quantized(data: bytes, samples: int) -> tuple[bytes, list[str]]:
    """The quantised graph compile_model would make from a float model (auto_quantize)."""
    model = load_model(data)
    if is_quantized(model):
        return data, []
    model = optimize_model(model)
    cal = Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(random_samples(model, samples), progress=False)
    q = quantize(model, cal.compute_range())
    return q, [f"calibrated on {samples} random sample(s): the cost does not depend on the int8 ranges"]


def compile_programs(data: bytes, targets: list[str], batches: list[int], *,
                     samples: int = CALIBRATION_SAMPLES, status: Any = None) -> tuple[list[Program], list[str]]:
    """One program per (target, batch) from ONNX bytes, quantising only once."""
    if status is not None:
        status.update("[bold]estimate[/bold]: quantising …")
    qdata, notes = _quantized(data, samples)
    programs = []
    for t in targets:
        for b in batches:
            if status is not None:
                status.update(f"[bold]estimate[/bold]: compiling for {t}, batch {b} …")
            program, _ = compile_model(qdata, CompileOptions(target_npu=t, batch_size=b, auto_quantize=False))
            programs.append(program)
    return programs, notes


def _targets(target_npu: str) -> list[str]:
    if target_npu == "all":
        return list(TARGETS)
    if target_npu not in TARGETS:
        raise ConfigError(f"unknown --target-npu {target_npu!r}; choose one of {', '.join(TARGETS)} or all")
    return [target_npu]


def _batches(batch_size: list[int]) -> list[int]:
    for b in batch_size:
        if not 1 <= b <= MAX_BATCH:
            raise ConfigError(f"--batch-size {b}: must be from 1 to {MAX_BATCH}")
    return list(dict.fromkeys(batch_size)) or list(DEFAULT_BATCHES)


def _load_program(data: bytes, path: Path, target_npu: str, batch_size: list[int]) -> Program:
    program = Program.from_bytes(data)
    if target_npu not in ("all", program.target):
        raise InvalidInput(f"{path} is compiled for {program.target}, not {target_npu}: drop --target-npu, or "
                           f"estimate the .onnx model (npusim estimate MODEL.onnx --target-npu {target_npu})")
    other = [b for b in batch_size if b != program.batch_size]
    if other:
        raise InvalidInput(f"{path} is compiled for batch {program.batch_size}, not {other[0]}: drop --batch-size, "
                           f"or estimate the .onnx model (npusim estimate MODEL.onnx --batch-size {other[0]})")
    return program


# -- the command ----------------------------------------------------------------------------------
def estimate_cmd(*, model: str | Path, target_npu: str = "all", batch_size: list[int] | None = None,
                 hw: list[str] | None = None, host: str = "mlperf",
                 step_costs: Callable[[Program], list[float | None]] | None = None,
                 json_out: bool = False) -> dict[str, Any]:
    """``npusim estimate``: print the estimate as tables (or one JSON object) and return it.

    ``step_costs`` times a program's host steps (the ``this`` profile; the CLI passes the
    client's)."""
    from rich.console import Console

    profile = host_profile(host, step_costs=step_costs)
    overrides = list(hw or [])
    chip: Hardware = with_overrides(WARBOY, overrides) if overrides else WARBOY  # type: ignore[assignment]
    targets = _targets(target_npu)
    given = model_source(model)
    data = given.data
    if is_program(data):
        programs, notes, source = [_load_program(data, Path(model), target_npu, list(batch_size or []))], [], "enf"
    else:
        batches = _batches(list(batch_size or []))
        with contextlib.nullcontext() if json_out else Console(stderr=True).status("estimate …") as status:
            programs, notes = compile_programs(data, targets, batches, status=status)
        source = "onnx"
    results = [estimate_program(p, chip if overrides else None, host=profile) for p in programs]
    if not profile.times_host_steps and any(p.cpu_steps() for p in programs):
        notes.append(f"host profile {profile.name}: host operators are outside the timed path, as the published "
                     "figures were measured; --host this times them on this machine")
    report = {
        "model": str(model), "source": source, "name": programs[0].meta.get("model", given.name),
        "hw": dict(_split(o) for o in overrides), "hardware": dataclasses.asdict(chip),
        "timing_params": dataclasses.asdict(timing_params()),
        "host": {"name": profile.name, "description": profile.description,
                 "runtime_overhead_ns": profile.runtime_overhead_ns}, "notes": notes,
        "programs": [r.as_dict() for r in results],
    }
    if json_out:
        print(json.dumps(report, default=float))
    else:
        _print(report, chip)
    return report


def _split(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key.strip(), value.strip()


# -- printing -------------------------------------------------------------------------------------
def _us(ns: float | None) -> str:
    return "—" if ns is None else f"{ns / 1e3:,.1f}"


def _print(report: dict[str, Any], chip: Hardware) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 150)  # a pipe gets whole rows, not folded ones
    what_if = ", ".join(f"{k}={v}" for k, v in report["hw"].items())
    params = ", ".join(f"{k} {v:.4g}" for k, v in report["timing_params"].items())
    out.print(f"[bold]{report['model']}[/bold] ({report['name']}): estimated on the emulated Warboy"
              + (f" with {what_if}" if what_if else "") + f" (timing parameters: {params})")
    for p in report["programs"]:
        for s in p["stages"]:
            est = s["estimate"]
            title = (f"{p['target']}, batch {p['batch_size']}"
                     + (f", NPU stage {s['index']}" if p["npu_stages"] > 1 else "") + ": cost per operator")
            t = Table(title=title)
            for col in ("operator", "type", "MACs", "compute cyc", "memory cyc", "bound by", "array fill", "mapping",
                        "DRAM bytes", "note"):
                t.add_column(col, justify="left" if col in ("operator", "type", "bound by", "mapping", "note")
                             else "right", overflow="fold")
            for o in s["ops"]:
                t.add_row(o["name"], o["op_type"], f"{o.get('macs', 0):,}", f"{o.get('compute_cycles', 0):,.0f}",
                          f"{o.get('memory_cycles', 0):,.0f}", o.get("bound", ""),
                          f"{o.get('array_fill', 1.0):.2f}" if o.get("macs") else "—", o.get("mapping", ""),
                          f"{o.get('dram_bytes', 0):,}", o.get("note", ""))
            t.add_row("total", "", f"{est.get('macs', 0):,}", f"{est.get('compute_cycles', 0):,.0f}", "", "", "", "",
                      f"{est.get('dram_bytes', 0):,}", "")
            out.print(t)
            tm = s["timing"]
            out.print(f"  NPU time {est.get('npu_ns', 0) / 1e3:,.1f} µs + job overhead "
                      f"{est.get('job_overhead_ns', 0) / 1e3:,.1f} µs = {tm['exec_ns'] / 1e3:,.1f} µs per job alone, "
                      f"{tm['exec_shared_ns'] / 1e3:,.1f} µs while the other PE streams DRAM "
                      f"(the MACs alone at peak: {est.get('ideal_ns', 0) / 1e3:,.1f} µs)")
            out.print(f"  DMA over PCIe ({chip.pcie_bytes_per_s / 1e9:g} GB/s per direction, "
                      f"{chip.pcie_latency_ns / 1e3:g} µs latency): host→device "
                      f"{tm['h2d_ns'] / 1e3:,.1f} µs ({tm['in_bytes']:,} B), device→host {tm['d2h_ns'] / 1e3:,.1f} µs "
                      f"({tm['out_bytes']:,} B)")
            out.print(f"  SRAM: {sram_summary(est)}")
    host = report["host"]
    out.print(f"host profile [bold]{host['name']}[/bold]: {host['description']}")
    t = Table(title="predicted per PE mode and batch size, in µs (npusim.services.timing, the daemon's engine)")
    for col in ("target", "batch", "mode", "runtime", "host in", "DMA in", "device", "DMA out", "host out",
                "latency", "device path", "samples/s"):
        t.add_column(col, justify="left" if col in ("target", "mode") else "right")
    for p in report["programs"]:
        for mode, m in p["modes"].items():
            rate, e = m["throughput_per_s"], m["end_to_end"] or {}
            t.add_row(p["target"], str(p["batch_size"]), mode, _us(e.get("runtime_ns")), _us(e.get("host_pre_ns")),
                      _us(e.get("h2d_ns")), _us(e.get("exec_ns")), _us(e.get("d2h_ns")),
                      _us(e.get("host_post_ns", 0) + e.get("host_between_ns", 0) if e else None),
                      _us(m["latency_ns"]), _us(m["device_latency_ns"]), "—" if rate is None else f"{rate:,.0f}")
    out.print(t)
    out.print("latency = runtime + host in + DMA in + device + DMA out + host out, one query at a time (device path: "
              "DMA in + device + DMA out); samples/s is the device's rate with every PE of the mode busy, the host's "
              "work overlapped by enough workers")
    for p in report["programs"]:
        for mode, m in p["modes"].items():
            if m.get("host_bound_per_s"):
                out.print(f"{p['target']}, batch {p['batch_size']}, {mode}: one worker doing the runtime's and the host "
                          f"operators' work keeps up with {m['host_bound_per_s']:,.0f} samples/s (throughput = "
                          "1 / max(NPU, CPU / workers))")
    if any(p["npu_stages"] > 1 for p in report["programs"]):
        out.print("[yellow]note:[/yellow] programs with several NPU stages: latency is the sum of the stages' and "
                  "throughput counts all of a sample's stages as one job; host CPU steps between them are not counted")
    if any("pe0+pe1" in p["modes"] for p in report["programs"]):
        out.print("pe0+pe1 is two streams, one per PE, so it has a throughput and no single-stream latency")
    for note in report["notes"]:
        out.print(f"[yellow]note:[/yellow] {note}")
