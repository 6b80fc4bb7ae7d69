"""Which operators the emulated chip runs: the published rules, read with the published results.

Everything else becomes a CPU operator of the program. The quantiser leaves such nodes in
float (they run on the host in float anyway) and the partitioner puts them in ``cpu`` steps.
Rules (the SDK's operator list, research/hardware.md): Conv with dilation ≤ 12; Slice only
along the height axis; Softmax and LpNormalization (p = 2) only for batch ≤ 2;
BatchNormalization only after a Conv; SpaceToDepth only in CRD mode; int8 work only.

Two rules of the list are read as the chip is published to behave (docs/partitioning.md):
a Conv with more than 128 groups is *split* into NPU convolutions of at most 128 groups (the
list says an operator outside its conditions "may be split into several operators"; the
vendor's sub-millisecond MobileNet detectors have depthwise convolutions of up to 1024
channels), and a Concat along the channel axis is an NPU memory operation (the vendor's
YOLOv5/v8 tables are whole-model NPU times, and their C3/C2f/SPPF blocks concatenate
channels). The cost model prices the split (services/cost) and ``npusim explain`` shows it.

ONNX's SpaceToDepth has no mode attribute (its inverse, DepthToSpace, has DCR and CRD), so the
CRD rule is checked on DepthToSpace, the operator that carries the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from npusim.compiler_svc.graph import GraphIndex, attr, dims

__all__ = ["NPU_OPS", "GraphInfo", "npu_reason"]

NPU_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Sub", "Concat", "Resize", "Flatten",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Split", "Slice", "Softmax", "LpNormalization",
    "SpaceToDepth", "DepthToSpace", "BatchNormalization", "Identity",
}
"""Operator types with an int8 NPU implementation; the rules below restrict some of them."""

CHANNEL, HEIGHT = 1, 2  # axes of an NCHW tensor


@dataclass
class GraphInfo:
    """What the rules need to know about a graph: static shapes, producers, constants."""

    shapes: dict[str, tuple[int, ...]]
    producers: dict[str, onnx.NodeProto]
    consts: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphInfo:
        return cls.from_index(GraphIndex.of(model))

    @classmethod
    def from_index(cls, idx: GraphIndex) -> GraphInfo:
        shapes = {name: dims(vi) for name, vi in idx.infos.items()
                  if all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
        shapes.update({k: v.shape for k, v in idx.consts.items()})
        return cls(shapes, idx.producers, idx.consts)

    def rank(self, tensor: str) -> int:
        return len(self.shapes.get(tensor, ()))


def _conv(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    dil = list(attr(node, "dilations", [1]))  # type: ignore[arg-type]
    if max(dil) > 12:
        return f"dilation {max(dil)}: the NPU accelerates Conv only with dilation ≤ 12"
    return None


def _concat(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    rank = g.rank(node.output[0]) or g.rank(node.input[0])
    axis = int(attr(node, "axis", 0))  # type: ignore[arg-type]
    axis = axis + rank if axis < 0 else axis
    if rank == 4 and axis not in (CHANNEL, HEIGHT):
        return f"Concat along axis {axis}: the NPU concatenates only along the channel and height axes"
    return None


def _slice(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    rank = g.rank(node.input[0])
    if rank != 4:
        return None
    starts = g.consts.get(node.input[1]) if len(node.input) > 1 else None
    if len(node.input) > 3 and node.input[3]:
        axes = g.consts.get(node.input[3])
        if axes is None:
            return "Slice with axes computed at run time is not an NPU operator"
    else:
        axes = np.arange(0 if starts is None else starts.size)
    bad = sorted({int(a) + rank if a < 0 else int(a) for a in np.ravel(axes)} - {HEIGHT})
    if bad:
        return f"Slice along axis {bad[0]}: the NPU slices only along the height axis"
    return None


def _small_batch(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    n = (g.shapes.get(node.input[0]) or (1,))[0]
    if n > 2:
        return f"{node.op_type} on batch {n}: the NPU runs it only for batch ≤ 2"
    if node.op_type == "LpNormalization" and int(attr(node, "p", 2)) != 2:  # type: ignore[arg-type]
        return "LpNormalization with p ≠ 2 is not an NPU operator"
    return None


def _bn(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    # The chip runs BatchNormalization only folded into the Conv before it, and optimize_model
    # does that fold; one still standing had no Conv to fold into.
    return "BatchNormalization runs on the NPU only folded into the Conv before it (optimize_model folds those)"


def _crd_only(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    mode = attr(node, "mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    return None if mode == "CRD" else f"{node.op_type} runs on the NPU only in CRD mode"


_RULES: dict[str, Callable[[onnx.NodeProto, GraphInfo], str | None]] = {
    "Conv": _conv, "ConvTranspose": _conv, "Concat": _concat, "Slice": _slice, "Softmax": _small_batch,
    "LpNormalization": _small_batch, "BatchNormalization": _bn, "DepthToSpace": _crd_only,
}


def npu_reason(node: onnx.NodeProto, g: GraphInfo) -> str | None:
    """None if the chip runs ``node``; otherwise why it becomes a CPU operator."""
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{node.op_type} is not an NPU operator"
    if node.op_type not in NPU_OPS:
        return f"{node.op_type} is not an NPU operator"
    big = next((t for t in list(node.input) + list(node.output) if t and g.rank(t) > 4), None)
    if big is not None:
        return f"its tensor {big!r} has rank {g.rank(big)}: the NPU's layouts hold at most 4 dimensions"
    rule = _RULES.get(node.op_type)
    return rule(node, g) if rule else None

