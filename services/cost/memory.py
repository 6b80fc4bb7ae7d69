"""The SRAM plan of one NPU stage: what stays on chip and what streams from DRAM.

The SRAM (256 KiB a slice) holds weights and activations. Two plans, and the compiler keeps
the one that makes the job faster (``model.estimate``):

- *resident*: every weight is loaded once, when the program opens, and never read from
  DRAM again; activations get what is left. Possible only when the weights — the whole
  program's, when it has several NPU stages — fit beside one image's live activations.
- *streamed*: each operator's weights stream from DRAM while it runs, in double-buffered
  tiles (two tiles of the largest operator's weights), prefetched as the published compiler
  for the calibration runs does (research/hardware.md); activations get the rest.

Either way the compiler runs as many images of a batch at once (a *sub-batch*) as keep every
live activation on chip, and streams the weights once per sub-batch. An activation is stored
as the chip lays it out, its rows padded to the lane width. A tensor made and read inside one
pass (a convolution's output before its fused activation) never lands in SRAM. When even one
image's live set does not fit, the tensors alive at that point live in DRAM: their maker writes
them there and each reader in another pass reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from npusim.services.cost.work import QDQ, Shapes, Work

__all__ = ["SramPlan", "plans", "sram_summary"]


@dataclass(frozen=True)
class SramPlan:
    resident: bool  # weights stay on chip (else they stream every sub-batch)
    sram_bytes: int
    weight_buffer: int  # SRAM the weights take: the program's, or two tiles of the largest
    free_bytes: int  # what activations may use
    peak_live_bytes: int  # the largest live activation set of one image
    live: tuple[int, ...]  # per operator: one image's live activation bytes while it runs
    spill: tuple[int, ...]  # per operator's pass: one image's activation bytes it moves through DRAM
    sub_batch: int
    runs: int  # sub-batches per job

    def spills(self, i: int) -> bool:
        return self.spill[i] > 0


@dataclass(frozen=True)
class _Tensors:
    """Every activation that lands in SRAM: when it lives and how big one image's copy is, and
    what each operator reads and makes."""

    life: dict[str, tuple[int, int, int]]  # tensor → (first operator, last operator, bytes per image)
    reads: list[list[str]]
    makes: list[list[str]]

    def live(self, ops: int) -> list[int]:
        """One image's bytes of activations alive while each operator runs: its inputs, its
        outputs and every tensor made before and read after it (a residual branch's input)."""
        live = [0] * ops
        for a, b, size in self.life.values():
            for k in range(max(a, 0), b + 1):
                live[k] += size
        return live


def _alias(model: onnx.ModelProto) -> dict[str, str]:
    """Q/DQ outputs name the same int8 tensor as their input on the chip."""
    out = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type in QDQ}

    def root(t: str) -> str:
        for _ in range(64):
            if t not in out:
                break
            t = out[t]
        return t

    return {t: root(t) for t in out}


def _tensors(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]], shapes: Shapes, lanes: int,
             passes: list[int]) -> _Tensors:
    alias = _alias(model)
    weights = {i.name for i in model.graph.initializer}
    outputs = {alias.get(o.name, o.name) for o in model.graph.output}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    readers: dict[str, set[int]] = {}
    maker: dict[str, int] = {}
    reads: list[list[str]] = []
    makes: list[list[str]] = []
    for k, (node, _) in enumerate(works):
        ins = [t for t in dict.fromkeys(alias.get(t, t) for t in node.input if t) if t not in weights]
        outs = list(dict.fromkeys(alias.get(t, t) for t in node.output if t))
        for t in ins:
            first.setdefault(t, -1)  # a stage input is on chip from the start
            last[t] = k
            readers.setdefault(t, set()).add(passes[k])
        for t in outs:
            first.setdefault(t, k)
            last[t] = max(last.get(t, k), k)
            maker[t] = passes[k]
        reads.append(ins)
        makes.append(outs)
    end = len(works) - 1
    for t in outputs:
        if t in last:
            last[t] = end  # an output stays until the job's results leave
    inside = {t for t, p in maker.items() if t not in outputs and readers.get(t, set()) <= {p}}
    life = {t: (a, last.get(t, a), shapes.stored(t, lanes)) for t, a in first.items() if t not in inside}
    return _Tensors(life, [[t for t in r if t in life] for r in reads], [[t for t in m if t in life] for m in makes])


def _spill(tensors: _Tensors, live: list[int], free: int, passes: list[int]) -> tuple[int, ...]:
    """Per pass, one image's DRAM traffic for activations that cannot stay on chip: a tensor alive
    while the live set exceeds the free SRAM is written to DRAM by its maker and read back by
    each reader in another pass."""
    spilled = {t for t, (a, b, _) in tensors.life.items()
               if any(live[k] > free for k in range(max(a, 0), b + 1))}
    size = {t: s for t, (_, _, s) in tensors.life.items()}
    made_in = {t: passes[k] for k, outs in enumerate(tensors.makes) for t in outs}
    traffic = [0] * len(passes)
    for k, (ins, outs) in enumerate(zip(tensors.reads, tensors.makes)):
        p = passes[k]
        traffic[p] += sum(size[t] for t in ins if t in spilled and made_in.get(t) != p)
        traffic[p] += sum(size[t] for t in outs if t in spilled)
    return tuple(traffic)


def plans(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]], shapes: Shapes, sram_bytes: int,
          lanes: int, passes: list[int], program_weights: int | None = None) -> list[SramPlan]:
    """The plans this stage can use, resident first. ``passes[k]``: the operator whose pass runs
    operator k (``fusion.passes``). ``program_weights``: the weights of every NPU stage of the
    program, which a resident plan keeps on chip together (default: this stage's)."""
    images = shapes.batch
    tensors = _tensors(model, works, shapes, lanes, passes)
    live = tensors.live(len(works))
    peak = max(live, default=0)
    own = sum(w.weight_bytes for _, w in works)
    out = []
    for resident, weights in ((True, max(own, program_weights or 0)),
                              (False, 2 * max((w.weight_bytes for _, w in works), default=0))):
        free = max(sram_bytes - weights, 0)
        if resident and (weights > sram_bytes or free < peak):
            continue  # resident weights would push one image's live activations off chip
        sub = max(1, min(images, free // peak)) if peak else images
        out.append(SramPlan(resident, sram_bytes, weights, free, peak, tuple(live),
                            _spill(tensors, live, free, passes), sub, -(-images // sub)))
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
