"""Work → cycles for a target, and the per-program estimate."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import numpy_helper

from compiler_svc.cost._list import RULES
from compiler_svc.cost.work import Shapes, Work
from services.errors import UnsupportedOperator
from services.hw import TIMING, Target, TimingParams

__all__ = ["Work", "estimate", "op_work"]

_FUSED = {"QuantizeLinear", "DequantizeLinear"}


def _weights(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes each weight occupies on the chip: int8 stays 1 byte, int32 bias 4, DQ'd weights 1."""
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in sizes:
            sizes[n.output[0]] = sizes[n.input[0]]
    return sizes


def op_work(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, Work]]:
    shapes = Shapes(model)
    weights = _weights(model)
    out = []
    for node in model.graph.node:
        if node.op_type in _FUSED:
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOperator(f"no NPU cost rule for {node.op_type} (node {node.name!r})")
        out.append((node, rule(node, shapes, weights)))
    return out


def estimate(model: onnx.ModelProto, target: Target, *, extra: list[dict[str, Any]] | None = None,
             params: TimingParams = TIMING) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-operator cost records and the program estimate for ``target``.

    compute = MACs / (MAC/cycle x efficiency) + vector ops / vector lanes;
    memory  = bytes that must stream from DRAM / DRAM bandwidth, where weights stream when
              all weights do not fit in half the SRAM and activations when an operator's
              working set does not fit in SRAM;
    cycles  = max(compute, memory) + a fixed per-operator overhead.
    """
    hw = target.hw
    works = op_work(model)
    total_weights = sum(w.weight_bytes for _, w in works)
    weights_resident = total_weights <= target.sram_bytes // 2
    dram_bytes_per_cycle = hw.dram_bytes_per_s / hw.clock_hz
    vector_per_cycle = target.slices * hw.vector_lanes_per_slice
    ops: list[dict[str, Any]] = []
    for node, w in works:
        compute = w.macs / (target.macs_per_cycle * params.mac_efficiency) + w.vector_ops / vector_per_cycle
        streamed = 0 if weights_resident else w.weight_bytes
        if w.in_bytes + w.out_bytes + w.weight_bytes > target.sram_bytes:
            streamed += w.in_bytes + w.out_bytes
        memory = streamed / dram_bytes_per_cycle
        if compute == 0 and memory == 0:
            cycles = 0.0  # metadata-only operators are folded away
        else:
            cycles = max(compute, memory) + params.op_overhead_cycles
        ops.append({
            "name": node.name, "op_type": node.op_type, "macs": w.macs, "vector_ops": w.vector_ops,
            "weight_bytes": w.weight_bytes, "dram_bytes": streamed, "cycles": cycles,
            "bound": "memory" if memory > compute else "compute",
        })
    for item in extra or []:
        cycles = item["bytes"] / dram_bytes_per_cycle + params.op_overhead_cycles
        ops.append({"name": item["name"], "op_type": item["op_type"], "macs": 0, "vector_ops": 0,
                    "weight_bytes": 0, "dram_bytes": item["bytes"], "cycles": cycles, "bound": "memory"})
    total = sum(o["cycles"] for o in ops)
    peak_act = max((w.in_bytes + w.out_bytes for _, w in works), default=0)
    est = {
        "npu_cycles": total,
        "npu_ns": total / hw.clock_hz * 1e9,
        "job_overhead_ns": params.job_overhead_ns,
        "macs": sum(w.macs for _, w in works),
        "weight_bytes": total_weights,
        "weights_resident": weights_resident,
        "peak_activation_bytes": peak_act,
        "sram_bytes": target.sram_bytes,
        "fits_sram": weights_resident and total_weights + peak_act <= target.sram_bytes,
    }
    return ops, est
