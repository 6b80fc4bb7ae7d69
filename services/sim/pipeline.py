"""What one request does, as the simulation sees it: a list of phases on a host core or a PE.

A request in a worker runs the runtime's per-request work (a host-profile constant: the vendor
runtime's own overhead, not this emulator's ZeroMQ transport), then the program's steps in
order: host operators and CPU steps hold a host core for their cost, an NPU stage is one job on
the worker's PE, timed by the daemon's engine (:class:`~npusim.services.timing.DeviceClock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from npusim.services.hw import WARBOY, Hardware
from npusim.services.program import NpuStep, Program
from npusim.services.timing import StageTiming

__all__ = ["Phase", "Pipeline"]


@dataclass(frozen=True, slots=True)
class Phase:
    """A host phase (``stage`` is None: ``ns`` on one host core) or an NPU stage's job."""

    ns: int = 0
    stage: StageTiming | None = None
    name: str = ""


@dataclass(frozen=True)
class Pipeline:
    """One request of a compiled program: its phases and how many samples it carries."""

    phases: tuple[Phase, ...]
    batch: int = 1
    name: str = ""

    @classmethod
    def of(cls, program: Program, step_ns: Sequence[float | None] | None, *, runtime_overhead_ns: float,
           hw: Hardware = WARBOY, stage_estimates: Sequence[dict] | None = None, time_scale: float = 1.0,
           host_scale: float = 1.0) -> Pipeline:
        """``step_ns``: each step's host cost (None for NPU steps; None for all: host steps outside
        the timed path, as the ``mlperf`` profile says). ``time_scale`` stretches the device as
        the daemon's ``--time-scale`` does; ``host_scale`` the host phases (a what-if)."""
        costs = list(step_ns) if step_ns is not None else [None] * len(program.steps)
        phases: list[Phase] = []
        if runtime_overhead_ns > 0:
            phases.append(Phase(int(runtime_overhead_ns * host_scale), name="runtime"))
        for step, ns in zip(program.steps, costs):
            if isinstance(step, NpuStep):
                stage = program.stages[step.stage]
                est = stage_estimates[step.stage] if stage_estimates is not None else None
                phases.append(Phase(stage=StageTiming.for_stage(stage, hw, time_scale, estimate=est),
                                    name=f"npu stage {step.stage}"))
            elif ns:
                phases.append(Phase(int(ns * host_scale), name=getattr(step, "op", "cpu")))
        return cls(tuple(_merge_host(phases)), program.batch_size, program.meta.get("model", ""))

    @property
    def host_ns(self) -> int:
        return sum(p.ns for p in self.phases if p.stage is None)

    @property
    def npu_ns(self) -> int:
        return sum(p.stage.exec_ns for p in self.phases if p.stage is not None)


def _merge_host(phases: list[Phase]) -> list[Phase]:
    """Consecutive host phases as one: the same core holds them back to back, in fewer events."""
    out: list[Phase] = []
    for p in phases:
        if out and p.stage is None and out[-1].stage is None:
            out[-1] = Phase(out[-1].ns + p.ns, name=f"{out[-1].name}+{p.name}")
        else:
            out.append(p)
    return out
