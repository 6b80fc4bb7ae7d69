"""Work → cycles for a target, and the per-program estimate."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import numpy_helper

from compiler_svc.cost._list import RULES
from compiler_svc.cost.work import Shapes, Work
from services.errors import UnsupportedOperator
from services.hw import Hardware, Target, TimingParams, timing_params

__all__ = ["Work", "array_fill", "estimate", "fill", "op_work"]

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


def fill(n: int, width: int) -> float:
    """The fraction of ``width`` parallel units doing useful work when ``n`` items are dealt
    out in rounds of ``width`` (the last round runs partly empty)."""
    if n <= 0:
        return 1.0
    return n / (width * -(-n // width))


def array_fill(w: Work, slices: int, hw: Hardware) -> float:
    """How well an operator fills the MAC array: lanes x depth x slices (docs/timing-model.md)."""
    best = max(fill(lanes, hw.lanes_per_slice) * fill(units, slices) for lanes, units in w.mappings)
    return best * fill(w.depth, hw.macs_per_slice // hw.lanes_per_slice)


def estimate(model: onnx.ModelProto, target: Target, *, extra: list[dict[str, Any]] | None = None,
             params: TimingParams | None = None,
             works: list[tuple[onnx.NodeProto, Work]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-operator cost records and the stage estimate for ``target`` (docs/timing-model.md).

    compute = MACs / (MAC/cycle x mac_efficiency x array fill) + vector ops / vector lanes;
    memory  = bytes that must stream from DRAM / DRAM bandwidth: all weights when they do not
              fit the half of SRAM kept for them (the other half double-buffers activations),
              an operator's activations when they do not fit what is left;
    cycles  = max(compute, memory) + op_overhead_cycles.
    ``npu_cycles_shared`` is the same with half the DRAM bandwidth: the other PE streaming too.
    ``works``: ``op_work(model)`` already computed (a parameter fit re-estimates one graph often).
    """
    params = params or timing_params()
    hw = target.hw
    works = works if works is not None else op_work(model)
    total_weights = sum(w.weight_bytes for _, w in works)
    weights_resident = total_weights <= target.sram_bytes * hw.weight_sram_fraction
    free_sram = target.sram_bytes - (total_weights if weights_resident else 0)
    dram_per_cycle = hw.dram_bytes_per_s / hw.clock_hz
    vector_per_cycle = target.slices * hw.vector_lanes_per_slice
    ops: list[dict[str, Any]] = []
    totals = {"alone": 0.0, "shared": 0.0, "compute": 0.0, "dram": 0}
    for node, w in works:
        eff = array_fill(w, target.slices, hw) if w.macs else 1.0
        compute = w.macs / (target.macs_per_cycle * params.mac_efficiency * eff) + w.vector_ops / vector_per_cycle
        streamed = 0 if weights_resident else w.weight_bytes
        if w.in_bytes + w.out_bytes > free_sram:
            streamed += w.in_bytes + w.out_bytes
        memory = streamed / dram_per_cycle
        if compute == 0 and memory == 0:
            cycles = shared = 0.0  # metadata-only operators are folded away
        else:
            cycles = max(compute, memory) + params.op_overhead_cycles
            shared = max(compute, 2 * memory) + params.op_overhead_cycles
        totals["alone"] += cycles
        totals["shared"] += shared
        totals["compute"] += compute
        totals["dram"] += streamed
        ops.append({
            "name": node.name, "op_type": node.op_type, "macs": w.macs, "vector_ops": w.vector_ops,
            "weight_bytes": w.weight_bytes, "dram_bytes": streamed, "cycles": cycles,
            "compute_cycles": compute, "memory_cycles": memory, "array_fill": round(eff, 4),
            "bound": "memory" if memory > compute else "compute",
        })
    for item in extra or []:  # the NPU's own Lower/Unlower: a pass over the bytes through DRAM
        memory = item["bytes"] / dram_per_cycle
        cycles = memory + params.op_overhead_cycles
        totals["alone"] += cycles
        totals["shared"] += 2 * memory + params.op_overhead_cycles
        totals["dram"] += item["bytes"]
        ops.append({"name": item["name"], "op_type": item["op_type"], "macs": 0, "vector_ops": 0,
                    "weight_bytes": 0, "dram_bytes": item["bytes"], "cycles": cycles, "compute_cycles": 0.0,
                    "memory_cycles": memory, "array_fill": 1.0, "bound": "memory"})
    peak_act = max((w.in_bytes + w.out_bytes for _, w in works), default=0)
    est = {
        "npu_cycles": totals["alone"],
        "npu_ns": totals["alone"] / hw.clock_hz * 1e9,
        "npu_cycles_shared": totals["shared"],
        "npu_ns_shared": totals["shared"] / hw.clock_hz * 1e9,
        "compute_cycles": totals["compute"],
        "dram_bytes": totals["dram"],
        "job_overhead_ns": params.job_overhead_ns,
        "macs": sum(w.macs for _, w in works),
        "weight_bytes": total_weights,
        "weights_resident": weights_resident,
        "peak_activation_bytes": peak_act,
        "sram_bytes": target.sram_bytes,
        "fits_sram": weights_resident and total_weights + peak_act <= target.sram_bytes,
        "clock_hz": hw.clock_hz,
    }
    return ops, est
