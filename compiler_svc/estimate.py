"""``npusim estimate``: what a model will cost on the chip, without a daemon.

Per operator it shows the cost model's records (compute vs memory cycles, what bounds it, how
well it fills the MAC array, the DRAM bytes it streams); per program, the NPU and DMA time;
per PE mode and batch size, the single-stream latency and offline throughput that
:mod:`services.timing` predicts — the same engine the daemon schedules jobs with, so the
prediction and a timing-only daemon run agree by construction.

A float ``.onnx`` is optimised, calibrated on one random sample and quantised *once*
(quantisation is most of a compile and depends on neither target nor batch), then compiled
per target and batch with :func:`compiler_svc.pipeline.compile_model`. With ``--hw`` every
NPU stage is re-costed on a what-if :class:`services.hw.Hardware`: the partition does not
depend on the hardware, only the cost model and the PCIe transfers do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from compiler_svc.calibrate import CalibrationMethod, Calibrator, random_samples
from compiler_svc.cost import estimate as cost_estimate
from compiler_svc.loader import load_model
from compiler_svc.passes import optimize_model
from compiler_svc.pipeline import MAX_BATCH, CompileOptions, compile_model
from compiler_svc.quantize import is_quantized, quantize
from services.errors import ConfigError, InvalidInput
from services.hw import TARGETS, WARBOY, Hardware, timing_params, with_overrides
from services.hw import target as resolve_target
from services.modelfile import read_model
from services.program import NpuStage, Program, is_program
from services.timing import StageTiming, single_stream, throughput

__all__ = ["CALIBRATION_SAMPLES", "DEFAULT_BATCHES", "MODES", "ProgramEstimate", "compile_programs", "estimate_cmd",
           "estimate_program", "layout_costs", "merge", "recost_stage", "stage_timing"]

MODES: dict[str, dict[str, list[str]]] = {
    "warboy": {"pe0": ["pe0"], "pe0+pe1": ["pe0", "pe1"]},
    "warboy-2pe": {"pe0-1": ["pe0-1"]},
}
"""The PE modes a program of each target can run in (a warboy program cannot open on pe0-1)."""
DEFAULT_BATCHES = (1, 8)
CALIBRATION_SAMPLES = 1
"""Random calibration samples: the ranges change the int8 values, never the cost."""
LAYOUT_OPS = ("Lower", "Unlower")
"""Cost records the partitioner adds for the NPU's own layout passes (not nodes of the graph)."""


# -- re-costing and timing ------------------------------------------------------------------------
def layout_costs(stage: NpuStage) -> list[dict[str, Any]]:
    """The Lower/Unlower passes the partitioner costed, as ``estimate(extra=...)`` takes them."""
    return [{"name": o["name"], "op_type": o["op_type"], "bytes": int(o.get("dram_bytes", 0))}
            for o in stage.ops if o.get("op_type") in LAYOUT_OPS]


def recost_stage(stage: NpuStage, target_name: str, hw: Hardware) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stage's per-operator records and estimate on ``hw``: the compiler's cost model run
    again on the stage graph, with the Lower/Unlower passes the partitioner costed."""
    return cost_estimate(onnx.load_from_string(stage.graph), resolve_target(target_name, hw),
                         extra=layout_costs(stage))


def stage_timing(stage: NpuStage, estimate: dict[str, Any], hw: Hardware) -> StageTiming:
    """Per-job constants as the daemon computes them at OPEN (time scale 1)."""
    return StageTiming.for_stage(stage, hw, estimate=estimate)


def merge(timings: list[StageTiming]) -> StageTiming:
    """A multi-stage program as one job (sums): the throughput of a PE kept busy with all of a
    sample's stages. Host CPU steps between the stages are not counted."""
    if len(timings) == 1:
        return timings[0]
    return StageTiming(*(sum(getattr(t, f.name) for t in timings) for f in dataclasses.fields(StageTiming)))


@dataclass
class ProgramEstimate:
    """One compiled program's costs and predictions, ready to print or dump as JSON."""

    target: str
    batch_size: int
    stages: list[dict[str, Any]]
    modes: dict[str, dict[str, Any]]

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
            "modes": self.modes, "stages": self.stages,
        }


def estimate_program(program: Program, hw: Hardware | None = None) -> ProgramEstimate:
    """Costs and predictions of ``program``; with ``hw``, every stage is re-costed on it."""
    chip = hw or WARBOY
    stages, timings = [], []
    for k, stage in enumerate(program.stages):
        ops, est = (stage.ops, stage.estimate) if hw is None else recost_stage(stage, program.target, chip)
        st = stage_timing(stage, est, chip)
        timings.append(st)
        stages.append({"index": k, "ops": ops, "estimate": est, "timing": dataclasses.asdict(st)})
    job = merge(timings) if timings else None
    modes: dict[str, dict[str, Any]] = {}
    for mode, pes in MODES.get(program.target, {}).items():
        latency = (sum(single_stream(pes[0], st) for st in timings) if len(pes) == 1 and timings else None)
        rate = throughput(pes, job, program.batch_size) if job is not None else None
        modes[mode] = {"pes": pes, "latency_ns": latency, "throughput_per_s": rate}
    return ProgramEstimate(program.target, program.batch_size, stages, modes)


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
def estimate_cmd(*, model: Path, target_npu: str = "all", batch_size: list[int] | None = None,
                 hw: list[str] | None = None, json_out: bool = False) -> dict[str, Any]:
    """``npusim estimate``: print the estimate as tables (or one JSON object) and return it."""
    from rich.console import Console

    overrides = list(hw or [])
    chip: Hardware = with_overrides(WARBOY, overrides) if overrides else WARBOY  # type: ignore[assignment]
    targets = _targets(target_npu)
    data = read_model(model)
    if is_program(data):
        programs, notes, source = [_load_program(data, model, target_npu, list(batch_size or []))], [], "enf"
    else:
        batches = _batches(list(batch_size or []))
        with contextlib.nullcontext() if json_out else Console(stderr=True).status("estimate …") as status:
            programs, notes = compile_programs(data, targets, batches, status=status)
        source = "onnx"
    results = [estimate_program(p, chip if overrides else None) for p in programs]
    report = {
        "model": str(model), "source": source, "name": programs[0].meta.get("model", model.stem),
        "hw": dict(_split(o) for o in overrides), "hardware": dataclasses.asdict(chip),
        "timing_params": dataclasses.asdict(timing_params()), "notes": notes,
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
def _sram(o: dict[str, Any], resident: bool) -> str:
    """What of an operator streams from DRAM: nothing (it fits SRAM), weights, activations."""
    if o.get("op_type") in LAYOUT_OPS:
        return "DRAM pass"
    dram = int(o.get("dram_bytes", 0))
    if dram == 0:
        return "fits"
    weights = 0 if resident else int(o.get("weight_bytes", 0))
    parts = (["weights"] if weights else []) + (["activations"] if dram > weights else [])
    return "streams " + "+".join(parts)


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
            est, resident = s["estimate"], s["estimate"].get("weights_resident", True)
            title = (f"{p['target']}, batch {p['batch_size']}"
                     + (f", NPU stage {s['index']}" if p["npu_stages"] > 1 else "") + ": cost per operator")
            t = Table(title=title)
            for col in ("operator", "type", "MACs", "compute cyc", "memory cyc", "bound by", "array fill",
                        "DRAM bytes", "SRAM"):
                t.add_column(col, justify="left" if col in ("operator", "type", "bound by", "SRAM") else "right",
                             overflow="fold")
            for o in s["ops"]:
                folded = not o.get("cycles")
                t.add_row(o["name"], o["op_type"], f"{o.get('macs', 0):,}", f"{o.get('compute_cycles', 0):,.0f}",
                          f"{o.get('memory_cycles', 0):,.0f}", "folded" if folded else o.get("bound", ""),
                          f"{o.get('array_fill', 1.0):.2f}" if o.get("macs") else "—",
                          f"{o.get('dram_bytes', 0):,}", _sram(o, resident))
            t.add_row("total", "", f"{est.get('macs', 0):,}", f"{est.get('compute_cycles', 0):,.0f}", "", "", "",
                      f"{est.get('dram_bytes', 0):,}", "fits" if est.get("fits_sram") else "does not fit")
            out.print(t)
            tm = s["timing"]
            out.print(f"  NPU time {est.get('npu_ns', 0) / 1e3:,.1f} µs + job overhead "
                      f"{est.get('job_overhead_ns', 0) / 1e3:,.1f} µs = {tm['exec_ns'] / 1e3:,.1f} µs per job alone, "
                      f"{tm['exec_shared_ns'] / 1e3:,.1f} µs while the other PE streams DRAM")
            out.print(f"  DMA over PCIe ({chip.pcie_bytes_per_s / 1e9:g} GB/s per direction): host→device "
                      f"{tm['h2d_ns'] / 1e3:,.1f} µs ({tm['in_bytes']:,} B), device→host {tm['d2h_ns'] / 1e3:,.1f} µs "
                      f"({tm['out_bytes']:,} B)")
            out.print(f"  SRAM: weights {est.get('weight_bytes', 0) / 2**20:.2f} MiB "
                      f"({'resident' if resident else 'streamed from DRAM every job'}), largest activation working "
                      f"set {est.get('peak_activation_bytes', 0) / 2**20:.2f} MiB of "
                      f"{est.get('sram_bytes', 0) / 2**20:.0f} MiB → "
                      f"{'fits' if est.get('fits_sram') else 'does not fit'}")
    t = Table(title="predicted per PE mode and batch size (services.timing, the daemon's engine)")
    for col in ("target", "batch", "mode", "NPU µs", "DMA in/out µs", "single-stream latency µs",
                "throughput samples/s"):
        t.add_column(col, justify="left" if col in ("target", "mode") else "right")
    for p in report["programs"]:
        for mode, m in p["modes"].items():
            rate = m["throughput_per_s"]
            t.add_row(p["target"], str(p["batch_size"]), mode, _us(p["npu_ns"]),
                      f"{_us(p['dma']['h2d_ns'])} / {_us(p['dma']['d2h_ns'])}", _us(m["latency_ns"]),
                      "—" if rate is None else f"{rate:,.0f}")
    out.print(t)
    if any(p["npu_stages"] > 1 for p in report["programs"]):
        out.print("[yellow]note:[/yellow] programs with several NPU stages: latency is the sum of the stages' and "
                  "throughput counts all of a sample's stages as one job; host CPU steps between them are not counted")
    if any("pe0+pe1" in p["modes"] for p in report["programs"]):
        out.print("pe0+pe1 is two streams, one per PE, so it has a throughput and no single-stream latency")
    for note in report["notes"]:
        out.print(f"[yellow]note:[/yellow] {note}")
