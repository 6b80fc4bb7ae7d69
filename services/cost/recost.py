"""Re-pricing a compiled NPU stage on other hardware (``--hw``), the same way everywhere."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import onnx

from services.cost.model import estimate, op_work
from services.cost.work import Work
from services.hw import Hardware, TimingParams
from services.hw import target as resolve_target
from services.program import NpuStage

__all__ = ["LAYOUT_OPS", "layout_costs", "recost_stage"]

LAYOUT_OPS = ("Lower", "Unlower")
"""Cost records the partitioner adds for the NPU's own layout passes (not nodes of the graph)."""


def layout_costs(stage: NpuStage) -> list[dict[str, Any]]:
    """The Lower/Unlower passes the partitioner costed, as ``estimate(extra=...)`` takes them."""
    return [{"name": o["name"], "op_type": o["op_type"], "bytes": int(o.get("dram_bytes", 0))}
            for o in stage.ops if o.get("op_type") in LAYOUT_OPS]


def recost_stage(stage: NpuStage, target_name: str, hw: Hardware,
                 params: TimingParams | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stage's per-operator records and estimate on ``hw``: the cost model run again on the
    stage graph, with the Lower/Unlower passes the partitioner costed."""
    graph, works = _parsed(stage.graph)
    return estimate(graph, resolve_target(target_name, hw), extra=layout_costs(stage), params=params, works=works)


@lru_cache(maxsize=8)
def _parsed(graph: bytes) -> tuple[onnx.ModelProto, list[tuple[onnx.NodeProto, Work]]]:
    """A stage graph parsed once: a fit or a sweep re-costs the same stage many times."""
    model = onnx.load_from_string(graph)
    return model, op_work(model)
