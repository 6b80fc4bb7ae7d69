"""Where Lower/Unlower run, and the host operators around them (the seed's rules).

Lower/Unlower run on the NPU when the tensor's last axis is the width and a multiple of 32;
when the last axis is the width but not a multiple of 32, a host ``Pad`` precedes the NPU
Lower (and a host ``Slice`` follows the NPU Unlower); otherwise the whole Lower/Unlower is
a host operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from services.layout import LANE, default_axes, lowered_shape, padded, width_is_last
from services.program import OpStep, TensorSpec

__all__ = ["Placed", "place_input", "place_output", "axes_from_consumers", "axes_from_producer"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SPATIAL = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "SpaceToDepth",
            "DepthToSpace")


@dataclass
class Placed:
    """A boundary tensor as the device sees it, the host operators that make it, and the
    bytes the NPU's own Lower/Unlower moves (0 when the host does the whole job)."""

    device: TensorSpec
    ops: list[OpStep]
    npu_bytes: int


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def axes_from_consumers(nodes: list[onnx.NodeProto], tensor: str, ndim: int) -> str:
    """Guess a tensor's logical axes from the operators it feeds (through Q/DQ)."""
    frontier, seen = [tensor], set()
    while frontier:
        t = frontier.pop()
        seen.add(t)
        for n in nodes:
            if t not in n.input:
                continue
            if n.op_type in _QDQ:
                frontier.extend(o for o in n.output if o not in seen)
            elif n.op_type == "Transpose" and ndim == 4 and _perm(n) == [0, 3, 1, 2]:
                return "NHWC"
            elif n.op_type in _SPATIAL and ndim == 4:
                return "NCHW"
    return default_axes(ndim)


def axes_from_producer(nodes: list[onnx.NodeProto], tensor: str, ndim: int) -> str:
    producers = {o: n for n in nodes for o in n.output}
    t = tensor
    while (n := producers.get(t)) is not None and n.op_type in _QDQ + ("Identity",):
        t = n.input[0]
    if n is not None and n.op_type == "Transpose" and ndim == 4 and _perm(n) == [0, 2, 3, 1]:
        return "NHWC"
    return default_axes(ndim)


def place_input(t: TensorSpec, source: TensorSpec | None = None) -> Placed:
    """``t``: the logical int8 tensor an NPU stage computes on; ``source``: the tensor the host
    holds when it is ``t`` in another axis order (an NHWC input). Returns what the device gets."""
    if source is not None and source.axes != t.axes:
        dev = TensorSpec(f"{t.name}:lowered", t.dtype, lowered_shape(t.shape, t.axes), t.axes, "lowered", t.pad)
        op = OpStep("Lower", {"axes": source.axes, "value": t.pad}, source.name, dev.name,
                    f"the input is {source.axes}: its last axis is not the width, so the NPU cannot lower it")
        return Placed(dev, [op], 0)
    w = t.shape[-1] if t.shape else 1
    if width_is_last(t.axes) and w % LANE == 0:
        return Placed(t, [], t.size)
    if width_is_last(t.axes):
        dev = TensorSpec(f"{t.name}:padded", t.dtype, t.shape[:-1] + (padded(w),), t.axes, "padded", t.pad)
        op = OpStep("Pad", {"multiple": LANE, "value": t.pad}, t.name, dev.name,
                    f"width {w} is not a multiple of {LANE}: the NPU lowers only aligned rows")
        return Placed(dev, [op], dev.size)
    dev = TensorSpec(f"{t.name}:lowered", t.dtype, lowered_shape(t.shape, t.axes), t.axes, "lowered", t.pad)
    op = OpStep("Lower", {"axes": t.axes, "value": t.pad}, t.name, dev.name,
                f"the last axis of {t.axes} is not the width: the NPU cannot lower it")
    return Placed(dev, [op], 0)


def place_output(t: TensorSpec) -> Placed:
    """``t``: the logical tensor an NPU stage produces; returns what the device sends back."""
    w = t.shape[-1] if t.shape else 1
    if width_is_last(t.axes) and w % LANE == 0:
        return Placed(t, [], t.size)
    if width_is_last(t.axes):
        dev = TensorSpec(f"{t.name}:padded", t.dtype, t.shape[:-1] + (padded(w),), t.axes, "padded", t.pad)
        op = OpStep("Slice", {"length": w}, dev.name, t.name,
                    f"width {w} is not a multiple of {LANE}: drop the row padding the NPU's Unlower leaves")
        return Placed(dev, [op], dev.size)
    dev = TensorSpec(f"{t.name}:lowered", t.dtype, lowered_shape(t.shape, t.axes), t.axes, "lowered", t.pad)
    op = OpStep("Unlower", {"axes": t.axes, "shape": list(t.shape)}, dev.name, t.name,
                f"the last axis of {t.axes} is not the width: the NPU cannot unlower it")
    return Placed(dev, [op], 0)
