"""Cost rules, one small function per operator family: a node and its shapes → its Work.

Tensors on the chip are int8, one byte per element. A rule counts per image what depends on
the schedule (the matrix product, vector element-operations) and per job what moves (bytes).
A vector pass counts one element-operation per element it writes, and a reduction (Softmax,
LpNormalization) three: the reduction, the normalisation and the scaling over the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx
from onnx import helper

from npusim.services.cost.work import Gemm, Shapes, Work
from npusim.services.errors import CompileError

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


def _activations(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> tuple[int, int]:
    ins = sum(shapes.bytes(i) for i in node.input if i and i not in weights)
    return ins, sum(shapes.bytes(o) for o in node.output if o)


def _output(node: onnx.NodeProto, shapes: Shapes) -> tuple[int, ...]:
    out = shapes.of(node.output[0])
    if 0 in out:
        raise CompileError(f"{node.op_type} {node.name!r} makes an empty tensor {list(out)}: the NPU has nothing "
                           "to compute; remove the operator or fix the input shapes")
    return out


def conv(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    w = shapes.of(node.input[1])  # Conv: (Cout, Cin/group, k...); ConvTranspose: (Cin, Cout/group, k...)
    out = _output(node, shapes)
    group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
    kernel = math.prod(w[2:])
    images = shapes.images(node.output[0])
    rows = out[2] if len(out) > 2 else 1
    width = math.prod(out[3:]) if len(out) > 3 else 1
    if node.op_type == "ConvTranspose":
        cout = w[1]
        macs = math.prod(shapes.of(node.input[0])) * w[1] * kernel  # each input element feeds a k-window
        # the array sees it as a convolution over the output: on average stride-many fewer taps
        depth = max(1, round(macs / images / (group * rows * width * cout)))
    else:
        cout = w[0] // group
        depth = w[1] * kernel
        macs = images * group * rows * width * cout * depth
    ins, outs = _activations(node, shapes, weights)
    return Work("mac", images, Gemm(rows, width, cout, depth, group),
                weight_bytes=sum(weights.get(i, 0) for i in node.input[1:] if i), in_bytes=ins, out_bytes=outs,
                pieces=-(-group // CONV_GROUP_LIMIT), macs=macs)


def gemm(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Gemm, and MatMul of any rank: the rows of A stream through B's columns. When B is one
    matrix every row shares its stationary tiles; when B has leading axes of its own (attention's
    per-head products) each of them is a group with tiles of its own."""
    out = _output(node, shapes)
    a, b = shapes.of(node.input[0]), shapes.of(node.input[1])
    trans_a = node.op_type == "Gemm" and int(_attr(node, "transA", 0))  # type: ignore[arg-type]
    depth = a[-2] if trans_a else a[-1]
    images = shapes.images(node.output[0])
    cols = out[-1] if out else 1
    lead = math.prod(out[:-2]) if len(out) > 2 else 1  # axes before the matrix
    if len(b) > 2 and math.prod(b[:-2]) > 1:
        groups, rows = max(lead // images, 1), out[-2]
    else:
        groups, rows = 1, max(math.prod(out[:-1]) // images, 1)
    ins, outs = _activations(node, shapes, weights)
    return Work("mac", images, Gemm(rows, 1, cols, depth, groups),
                weight_bytes=sum(weights.get(i, 0) for i in node.input if i), in_bytes=ins, out_bytes=outs,
                macs=math.prod(out) * depth)


def pool(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """A pooling window is a reduction on the vector lanes: one element-operation per tap."""
    inp, out = shapes.of(node.input[0]), _output(node, shapes)
    if node.op_type.startswith("Global"):
        ops = math.prod(inp)
    else:
        ops = math.prod(out) * math.prod(_attr(node, "kernel_shape", [1]))  # type: ignore[arg-type]
    images = shapes.images(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", images, vector_ops=ops // images, in_bytes=ins, out_bytes=outs)


def eltwise(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    out = _output(node, shapes)
    images = shapes.images(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", images, vector_ops=math.prod(out) // images, in_bytes=ins, out_bytes=outs,
                elementwise=True)


def reduce(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    out = _output(node, shapes)
    images = shapes.images(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", images, vector_ops=3 * math.prod(out) // images, in_bytes=ins, out_bytes=outs)


def move(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Data movement (Transpose, Concat, Split, Resize, Pad, Slice): one pass over what it writes."""
    _output(node, shapes)
    images = shapes.images(node.output[0])
    ins, outs = _activations(node, shapes, weights)
    return Work("vector", images, vector_ops=outs // images, in_bytes=ins, out_bytes=outs)


def free(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Metadata only (Reshape, Flatten, Squeeze): the layout is reinterpreted, nothing moves."""
    return Work("free")
