"""The SRAM plan of one NPU stage: what stays on chip and what streams from DRAM.

The SRAM (256 KiB a slice) holds weights and activations. Two plans, and the compiler keeps
the one that makes the job faster (``model.estimate``):

- *resident*: every weight is loaded once, when the program opens, and never read from
  DRAM again; activations get what is left. Possible only when the weights fit.
- *streamed*: each operator's weights stream from DRAM while it runs, in double-buffered
  tiles (two tiles of the largest operator's weights), prefetched as the published compiler
  for the calibration runs does (research/hardware.md); activations get the rest.

Either way the compiler runs as many images of a batch at once (a *sub-batch*) as keep every
live activation on chip, and streams the weights once per sub-batch. When even one image's
live set at an operator does not fit, that operator streams its input and output through DRAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from services.cost.work import Shapes, Work

__all__ = ["SramPlan", "plans", "sram_summary"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class SramPlan:
    resident: bool  # weights stay on chip (else they stream every sub-batch)
    sram_bytes: int
    weight_buffer: int  # SRAM the weights take: all of them, or two tiles of the largest
    free_bytes: int  # what activations may use
    peak_live_bytes: int  # the largest live activation set of one image
    live: tuple[int, ...]  # per operator: one image's live activation bytes while it runs
    sub_batch: int
    runs: int  # sub-batches per job

    def spills(self, i: int) -> bool:
        return self.live[i] > self.free_bytes


def _alias(model: onnx.ModelProto) -> dict[str, str]:
    """Q/DQ outputs name the same int8 tensor as their input on the chip."""
    out: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type in _QDQ:
            out[n.output[0]] = n.input[0]

    def root(t: str) -> str:
        seen = 0
        while t in out and seen < 64:
            t, seen = out[t], seen + 1
        return t

    return {t: root(t) for t in out}


def _live(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]], shapes: Shapes, images: int) -> list[int]:
    """One image's bytes of activations alive while each operator runs: its inputs, its outputs
    and every tensor made before and read after it (a residual branch's input)."""
    alias = _alias(model)
    weights = {i.name for i in model.graph.initializer}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for k, (node, _) in enumerate(works):
        for t in (alias.get(t, t) for t in node.input if t):
            if t in weights:
                continue
            first.setdefault(t, -1)  # a stage input is on chip from the start
            last[t] = k
        for t in (alias.get(t, t) for t in node.output if t):
            first.setdefault(t, k)
            last[t] = max(last.get(t, k), k)
    end = len(works) - 1
    for o in model.graph.output:
        t = alias.get(o.name, o.name)
        if t in last:
            last[t] = end  # an output stays until the job's results leave
    live = [0] * len(works)
    for t, a in first.items():
        size = shapes.bytes(t) // max(images, 1)
        for k in range(max(a, 0), last.get(t, a) + 1):
            live[k] += size
    return live


def plans(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]], shapes: Shapes,
          sram_bytes: int) -> list[SramPlan]:
    """The plans this stage can use: streamed always, resident when the weights fit."""
    images = max((w.images for _, w in works if w.kind != "free"), default=1)
    live = _live(model, works, shapes, images)
    peak = max(live, default=0)
    total = sum(w.weight_bytes for _, w in works)
    out = []
    for resident, weights in ((False, 2 * max((w.weight_bytes for _, w in works), default=0)), (True, total)):
        free = max(sram_bytes - weights, 0)
        if resident and free < peak:
            continue  # resident weights would push live activations of one image off chip
        sub = max(1, min(images, free // peak)) if peak else images
        out.append(SramPlan(resident, sram_bytes, weights, free, peak, tuple(live), sub, -(-images // sub)))
    return out


def sram_summary(est: dict[str, object]) -> str:
    """What a stage estimate's SRAM plan holds, in one line (``npusim explain`` and ``estimate``)."""
    mib = 2 ** 20
    where = ("resident (loaded when the program opens)" if est.get("weights_resident") else
             "streamed from DRAM as each operator runs")
    line = (f"weights {float(est.get('weight_bytes', 0)) / mib:.2f} MiB {where}; "  # type: ignore[arg-type]
            f"one image's live activations peak at {float(est.get('peak_activation_bytes', 0)) / mib:.2f} MiB of the "  # type: ignore[arg-type]
            f"{float(est.get('activation_sram_bytes', est.get('sram_bytes', 0))) / mib:.1f} MiB left for them → ")  # type: ignore[arg-type]
    if est.get("fits_sram", True):
        return line + f"fits, {est.get('sub_batch', 1)} image(s) at a time"
    return line + f"does not fit: {est.get('spilled_ops', 0)} operator(s) stream their activations through DRAM"
