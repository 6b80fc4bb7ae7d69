"""Cost rules, one small function per operator family: a node and its shapes → its Work.

Tensors on the chip are int8, one byte per element. A rule counts per image what depends on
the schedule (MACs, vector element-operations) and per job what moves (bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx
from onnx import helper

from services.cost.work import Gemm, Shapes, Work

__all__ = ["CONV_GROUP_LIMIT", "Rule", "conv", "eltwise", "free", "gemm", "move", "pool", "reduce"]

CONV_GROUP_LIMIT = 128
"""The SDK's operator list accelerates a Conv with at most 128 groups; beyond that the compiler
splits it into convolutions of at most 128 groups each (research/hardware.md, docs/partitioning.md)."""

Rule = Callable[[onnx.NodeProto, Shapes, dict[str, int]], Work]


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _images(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) >= 2 and shape[0] > 0 else 1


def _activations(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> tuple[int, int]:
    ins = sum(shapes.bytes(i) for i in node.input if i and i not in weights)
    return ins, sum(shapes.bytes(o) for o in node.output if o)


def conv(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    w = shapes.of(node.input[1])  # Conv: (Cout, Cin/group, k...); ConvTranspose: (Cin, Cout/group, k...)
    out = shapes.of(node.output[0])
    group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = math.prod(w[2:])
    images = _images(out)
    rows = out[2] if len(out) > 2 else 1
    width = math.prod(out[3:]) if len(out) > 3 else 1
    if node.op_type == "ConvTranspose":
        cout = w[1]
        per_image = math.prod(shapes.of(node.input[0])) // images * w[1] * kernel  # each input feeds a k-window
        depth = max(1, round(per_image / (group * rows * width * cout)))
    else:
        cout = w[0] // group
        depth = w[1] * kernel
    ins, outs = _activations(node, shapes, weights)
    return Work("mac", images, Gemm(rows, width, cout, depth, group), weight_bytes=weights.get(node.input[1], 0),
                in_bytes=ins, out_bytes=outs, pieces=-(-group // CONV_GROUP_LIMIT))


def gemm(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    a = shapes.of(node.input[0])
    out = shapes.of(node.output[0])
    trans_a = int(_attr(node, "transA", 0)) if node.op_type == "Gemm" else 0  # type: ignore[arg-type]
    depth = a[-2] if trans_a else a[-1]
    images = _images(out)
    rows = max(math.prod(out[1:-1]), 1) if len(out) > 2 else 1
    ins, outs = _activations(node, shapes, weights)
    return Work("mac", images, Gemm(rows, 1, out[-1] if out else 1, depth),
                weight_bytes=sum(weights.get(i, 0) for i in node.input[1:]), in_bytes=ins, out_bytes=outs)


def pool(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """A pooling window is a reduction on the vector lanes: one element-operation per tap."""
    inp, out = shapes.of(node.input[0]), shapes.of(node.output[0])
    if node.op_type.startswith("Global"):
        ops = math.prod(inp)
    else:
        ops = math.prod(out) * math.prod(_attr(node, "kernel_shape", [1]))  # type: ignore[arg-type]
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", _images(out), vector_ops=ops // _images(out), in_bytes=ins, out_bytes=outs)


def eltwise(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    out = shapes.of(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", _images(out), vector_ops=math.prod(out) // _images(out), in_bytes=ins, out_bytes=outs,
                elementwise=True)


def reduce(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Softmax / LpNormalization: a reduction pass, a normalising pass and a scaling pass."""
    out = shapes.of(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", _images(out), vector_ops=3 * math.prod(out) // _images(out), in_bytes=ins, out_bytes=outs)


def move(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Data movement (Transpose, Concat, Split, Resize, Pad, Slice): one pass over what it writes."""
    out = shapes.of(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", _images(out), vector_ops=outs // _images(out), in_bytes=ins, out_bytes=outs)


def free(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Metadata only (Reshape, Flatten, Squeeze): the layout is reinterpreted, nothing moves."""
    return Work("free")
