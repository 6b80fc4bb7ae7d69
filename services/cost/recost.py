"""Re-pricing a compiled NPU stage on other hardware (``--hw``), the same way everywhere."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import onnx

from npusim.services.cost.model import estimate, op_work
from npusim.services.cost.work import Work
from npusim.services.hw import Hardware, TimingParams
from npusim.services.hw import target as resolve_target
from npusim.services.program import NpuStage, Program

__all__ = ["LAYOUT_OPS", "layout_costs", "program_weights", "recost_program", "recost_stage"]

LAYOUT_OPS = ("Lower", "Unlower")
"""Cost records the partitioner adds for the NPU's own layout passes (not nodes of the graph)."""


def layout_costs(stage: NpuStage) -> list[dict[str, Any]]:
    """The Lower/Unlower passes the partitioner costed, as ``estimate(extra=...)`` takes them."""
    return [{"name": o["name"], "op_type": o["op_type"], "bytes": int(o.get("dram_bytes", 0))}
            for o in stage.ops if o.get("op_type") in LAYOUT_OPS]


def recost_stage(stage: NpuStage, target_name: str, hw: Hardware, params: TimingParams | None = None, *,
                 batch: int = 1, program_weights: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stage's per-operator records and estimate on ``hw``: the cost model run again on the
    stage graph, with the Lower/Unlower passes the partitioner costed."""
    graph, works = _parsed(stage.graph, batch)
    return estimate(graph, resolve_target(target_name, hw), extra=layout_costs(stage), params=params, works=works,
                    batch=batch, program_weights=program_weights)


def recost_program(program: Program, hw: Hardware, params: TimingParams | None = None
                   ) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Every NPU stage of ``program`` re-costed on ``hw``, the stages' weights sharing the SRAM."""
    together = program_weights(program.stages)
    return [recost_stage(s, program.target, hw, params, batch=program.batch_size, program_weights=together)
            for s in program.stages]


def program_weights(stages: list[NpuStage]) -> int | None:
    """The weight bytes a program's NPU stages keep on chip together; None for a one-stage program."""
    if len(stages) < 2:
        return None
    return sum(int(s.estimate.get("weight_bytes", 0)) for s in stages)


@lru_cache(maxsize=4)
def _parsed(graph: bytes, batch: int) -> tuple[onnx.ModelProto, list[tuple[onnx.NodeProto, Work]]]:
    """A stage graph parsed once: a fit or a sweep re-costs the same stage many times."""
    model = onnx.load_from_string(graph)
    return model, op_work(model, batch)
