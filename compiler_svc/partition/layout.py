"""Where Lower/Unlower run, and the host operators around them (the seed's rules).

Lower/Unlower run on the NPU when the tensor's last axis is the width and a multiple of 32;
when the last axis is the width but not a multiple of 32, a host ``Pad`` precedes the NPU
Lower (and a host ``Slice`` follows the NPU Unlower); otherwise the whole Lower/Unlower is
a host operator. A scalar has no layout: it crosses as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from npusim.compiler_svc.graph import GraphIndex, perm
from npusim.services.layout import LANE, default_axes, lowered_shape, padded, width_is_last
from npusim.services.program import OpStep, TensorSpec

__all__ = ["Placed", "axes_of", "device_form", "place_input", "to_logical"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SPATIAL = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "SpaceToDepth",
            "DepthToSpace")
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


@dataclass
class Placed:
    """A boundary tensor as the device sees it, the host operators that make it, and the
    bytes the NPU's own Lower/Unlower moves (0 when the host does the whole job)."""

    device: TensorSpec
    ops: list[OpStep]
    npu_bytes: int


def axes_of(idx: GraphIndex, tensor: str, ndim: int) -> str:
    """A tensor's logical axes: NHWC when the graph transposes it from or to NCHW right
    next to it (through Q/DQ), NCHW when a spatial operator reads it, else the default."""
    if ndim != 4:
        return default_axes(ndim)
    t = tensor
    while (n := idx.producers.get(t)) is not None and n.op_type in _QDQ + ("Identity",):
        t = n.input[0]
    if n is not None and n.op_type == "Transpose" and perm(n) == _TO_NHWC:
        return "NHWC"
    frontier, seen = [tensor], {tensor}
    while frontier:
        for n in idx.readers(frontier.pop()):
            if n.op_type in _QDQ:
                frontier.extend(o for o in n.output if o not in seen)
                seen.update(n.output)
            elif n.op_type == "Transpose" and perm(n) == _TO_NCHW:
                return "NHWC"
            elif n.op_type in _SPATIAL:
                return "NCHW"
    return default_axes(ndim)


def device_form(t: TensorSpec) -> tuple[TensorSpec, int, str]:
    """What the device holds for the logical tensor ``t``: (spec, bytes the NPU's own
    Lower/Unlower moves, why the host must help). An aligned tensor is its own device form."""
    if not t.shape:
        return t, 0, ""
    w = t.shape[-1]
    if width_is_last(t.axes) and w % LANE == 0:
        return t, t.size, ""
    if width_is_last(t.axes):
        dev = TensorSpec(f"{t.name}:padded", t.dtype, t.shape[:-1] + (padded(w),), t.axes, "padded", t.pad)
        return dev, dev.size, f"width {w} is not a multiple of {LANE}"
    dev = TensorSpec(f"{t.name}:lowered", t.dtype, lowered_shape(t.shape, t.axes), t.axes, "lowered", t.pad)
    return dev, 0, f"the last axis of {t.axes} is not the width"


def place_input(t: TensorSpec, src: str, source: TensorSpec | None = None) -> Placed:
    """The device form of logical ``t`` whose data the host holds in env tensor ``src``;
    ``source``: the host holds ``t`` in another axis order instead (an NHWC input)."""
    if source is not None and source.axes != t.axes:
        dev = TensorSpec(f"{t.name}:lowered", t.dtype, lowered_shape(t.shape, t.axes), t.axes, "lowered", t.pad)
        op = OpStep("Lower", {"axes": source.axes, "value": t.pad}, source.name, dev.name,
                    f"the input is {source.axes}: its last axis is not the width, so the NPU cannot lower it")
        return Placed(dev, [op], 0)
    dev, npu_bytes, why = device_form(t)
    if dev.layout == "logical":
        return Placed(replace(dev, name=src), [], npu_bytes)
    if dev.layout == "padded":
        op = OpStep("Pad", {"multiple": LANE, "value": t.pad}, src, dev.name, f"{why}: the NPU lowers only aligned rows")
    else:
        op = OpStep("Lower", {"axes": t.axes, "value": t.pad}, src, dev.name, f"{why}: the NPU cannot lower it")
    return Placed(dev, [op], npu_bytes)


def to_logical(dev: TensorSpec, t: TensorSpec, out: str) -> list[OpStep]:
    """Host operators turning device tensor ``dev`` back into logical ``t``, written to ``out``."""
    if dev.layout == "padded":
        return [OpStep("Slice", {"length": t.shape[-1]}, dev.name, out,
                       f"width {t.shape[-1]} is not a multiple of {LANE}: drop the row padding the NPU's "
                       "Unlower leaves")]
    if dev.layout == "lowered":
        return [OpStep("Unlower", {"axes": t.axes, "shape": list(t.shape)}, dev.name, out,
                       f"the last axis of {t.axes} is not the width: the NPU cannot unlower it")]
    return []
