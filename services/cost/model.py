"""One NPU stage's cost: per-operator cycles and the stage estimate the timing engine schedules.

Per operator and sub-batch (docs/timing-model.md):

    compute  = images x (array or vector cycles of one image)        array.py
    memory   = (streamed weight bytes + spilled activation bytes) / DRAM rate   memory.py
    cycles   = max(compute, memory)

An operator's DRAM traffic streams while it computes, so the longer of the two sets its time
(the roofline); ``shared`` is the same with half the DRAM rate, for when the other PE streams
too. The stage is costed on each SRAM plan it can use and the faster is kept.
Fused element-wise operators cost nothing of their own (fusion.py); metadata-only operators
are folded away. The daemon, ``npusim estimate`` and the fidelity benchmark all call this.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import numpy_helper

from npusim.services.cost._list import RULES
from npusim.services.cost.array import mac_cycles, vector_cycles
from npusim.services.cost.fusion import passes
from npusim.services.cost.memory import SramPlan, plans
from npusim.services.cost.rules import CONV_GROUP_LIMIT
from npusim.services.cost.work import QDQ, Shapes, Work
from npusim.services.errors import UnsupportedOperator
from npusim.services.hw import Target, TimingParams, timing_params

__all__ = ["estimate", "op_work"]


def _weights(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes each weight occupies on the chip: int8 stays 1 byte, int32 bias 4, DQ'd weights 1."""
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in sizes:
            sizes[n.output[0]] = sizes[n.input[0]]
    return sizes


def op_work(model: onnx.ModelProto, batch: int = 1) -> list[tuple[onnx.NodeProto, Work]]:
    """Every operator of a stage graph with its Work (Q/DQ are part of the int8 kernels);
    ``batch``: the program's batch size, the images a job holds."""
    shapes = Shapes(model, batch)
    weights = _weights(model)
    out = []
    for node in model.graph.node:
        if node.op_type in QDQ:
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOperator(f"no NPU cost rule for {node.op_type} (node {node.name!r})")
        out.append((node, rule(node, shapes, weights)))
    return out


def estimate(model: onnx.ModelProto, target: Target, *, extra: list[dict[str, Any]] | None = None,
             params: TimingParams | None = None, works: list[tuple[onnx.NodeProto, Work]] | None = None,
             batch: int = 1, program_weights: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-operator cost records and the stage estimate for ``target``, on the faster SRAM plan.

    ``extra``: the NPU's own Lower/Unlower passes (``{"name", "op_type", "bytes"}``), which are
    DMA passes through DRAM rather than graph nodes. ``works``: ``op_work(model, batch)`` already
    made (a parameter fit re-costs one graph many times). ``batch``: the program's batch size.
    ``program_weights``: the weight bytes of every NPU stage of the program, when it has several."""
    params = params or timing_params()
    works = works if works is not None else op_work(model, batch)
    host = passes(model, works)
    compute = [_compute(k, works, host, target, params) for k in range(len(works))]
    candidates = plans(model, works, Shapes(model, batch), target.sram_bytes, target.hw.lanes_per_slice, host,
                       program_weights)
    costed = [_costed(works, compute, host, target, plan, extra or []) for plan in candidates]
    # the faster plan; on a tie the first, resident, which spares the DRAM (and so the other PE)
    return min(costed, key=lambda c: (c[1]["npu_cycles"], c[1]["npu_cycles_shared"], c[1]["dram_bytes"]))


def _compute(k: int, works: list[tuple[onnx.NodeProto, Work]], host: list[int], target: Target,
             params: TimingParams) -> tuple[float, dict[str, Any]]:
    """One operator's array or vector cycles for the whole job, and what the record says of them."""
    _, w = works[k]
    if w.kind == "free" or host[k] != k:
        return 0.0, {}
    if w.kind == "mac" and w.gemm is not None:
        arr = mac_cycles(w.gemm, target.slices, target.hw, w.pieces, params.stream_efficiency)
        info: dict[str, Any] = {"mapping": arr.mapping, "pieces": w.pieces, "folds": arr.folds, "stream": arr.stream}
        if w.pieces > 1:
            info["note"] = (f"split into {w.pieces} NPU convolutions of at most {CONV_GROUP_LIMIT} groups "
                            f"({w.gemm.groups} groups)")
        return float(arr.cycles * w.images), info
    return float(vector_cycles(w.vector_ops, target.slices, target.hw, params.stream_efficiency) * w.images), {}


def _costed(works: list[tuple[onnx.NodeProto, Work]], compute: list[tuple[float, dict[str, Any]]], host: list[int],
            target: Target, sram: SramPlan, extra: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    hw = target.hw
    rate = hw.dram_bytes_per_s / hw.clock_hz  # bytes per cycle
    peak = target.macs_per_cycle
    ops: list[dict[str, Any]] = []
    alone = shared = compute_total = 0.0
    dram_total = 0
    for k, ((node, w), (cycles_compute, info)) in enumerate(zip(works, compute)):
        record: dict[str, Any] = {"name": node.name, "op_type": node.op_type, "macs": w.macs,
                                  "vector_ops": w.vector_ops * w.images, "weight_bytes": w.weight_bytes}
        if w.kind == "free" or host[k] != k:
            fused = host[k] != k
            record.update(dram_bytes=0, cycles=0.0, compute_cycles=0.0, memory_cycles=0.0, array_fill=1.0,
                          bound="fused" if fused else "folded")
            if fused:
                into = works[host[k]][0].name
                record.update(fused_into=into, note=f"fused into {into}'s vector stage")
            ops.append(record)
            continue
        spilled = sram.spill[k] * w.images
        traffic = (0 if sram.resident else w.weight_bytes * sram.runs) + spilled
        memory = traffic / rate
        cycles = max(cycles_compute, memory)
        alone += cycles
        shared += max(cycles_compute, 2 * memory)
        compute_total += cycles_compute
        dram_total += traffic
        record.update(info)
        record.update(dram_bytes=traffic, cycles=cycles, compute_cycles=cycles_compute, memory_cycles=memory,
                      array_fill=w.macs / (cycles_compute * peak) if w.macs and cycles_compute else 1.0,
                      bound="memory" if memory > cycles_compute else "compute", spills=spilled > 0)
        ops.append(record)
    for item in extra:  # the NPU's own Lower/Unlower: one DMA pass over the bytes through DRAM
        memory = item["bytes"] / rate
        alone += memory
        shared += 2 * memory
        dram_total += item["bytes"]
        ops.append({"name": item["name"], "op_type": item["op_type"], "macs": 0, "vector_ops": 0,
                    "weight_bytes": 0, "dram_bytes": item["bytes"], "cycles": memory, "compute_cycles": 0.0,
                    "memory_cycles": memory, "array_fill": 1.0, "bound": "memory"})
    macs = sum(w.macs for _, w in works)
    est = {
        "npu_cycles": alone,
        "npu_ns": alone / hw.clock_hz * 1e9,
        "npu_cycles_shared": shared,
        "npu_ns_shared": shared / hw.clock_hz * 1e9,
        "compute_cycles": compute_total,
        "dram_bytes": dram_total,
        "job_overhead_ns": hw.pcie_latency_ns,
        "macs": macs,
        "ideal_ns": macs / peak / hw.clock_hz * 1e9,
        "weight_bytes": sum(w.weight_bytes for _, w in works),
        "weights_resident": sram.resident,
        "peak_activation_bytes": sram.peak_live_bytes,
        "activation_sram_bytes": sram.free_bytes,
        "sub_batch": sram.sub_batch,
        "spilled_ops": sum(1 for o in ops if o.get("spills")),
        "sram_bytes": target.sram_bytes,
        "fits_sram": sram.peak_live_bytes <= sram.free_bytes,
        "clock_hz": hw.clock_hz,
    }
    return ops, est
