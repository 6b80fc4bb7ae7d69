"""Cost rules, one small function per operator family. Shapes are int8 tensors (1 byte)."""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from compiler_svc.cost.work import Shapes, Work
from compiler_svc.graph import attr


def conv(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    w = shapes.of(node.input[1])  # Conv: (Cout, Cin/group, k...); ConvTranspose: (Cin, Cout/group, k...)
    k = math.prod(w[2:])
    if node.op_type == "ConvTranspose":
        macs = math.prod(shapes.of(node.input[0])) * w[1] * k
    else:
        macs = math.prod(shapes.of(node.output[0])) * w[1] * k
    return Work(macs=macs, weight_bytes=weights.get(node.input[1], 0),
                in_bytes=shapes.bytes(node.input[0]), out_bytes=shapes.bytes(node.output[0]))


def gemm(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    a = shapes.of(node.input[0])
    out = shapes.of(node.output[0])
    k = a[-1] if not int(attr(node, "transA", 0)) else a[-2]  # type: ignore[arg-type]
    return Work(macs=math.prod(out) * k, weight_bytes=sum(weights.get(i, 0) for i in node.input[1:]),
                in_bytes=shapes.bytes(node.input[0]), out_bytes=shapes.bytes(node.output[0]))


def pool(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    inp = shapes.of(node.input[0])
    if node.op_type.startswith("Global"):
        ops = math.prod(inp)
    else:
        kernel = attr(node, "kernel_shape", [1])
        ops = math.prod(shapes.of(node.output[0])) * math.prod(kernel)  # type: ignore[arg-type]
    return Work(vector_ops=ops, in_bytes=shapes.bytes(node.input[0]), out_bytes=shapes.bytes(node.output[0]))


def eltwise(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    return Work(vector_ops=math.prod(shapes.of(node.output[0])),
                in_bytes=sum(shapes.bytes(i) for i in node.input if i and i not in weights),
                out_bytes=shapes.bytes(node.output[0]))


def reduce(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Softmax / LpNormalization: a reduction pass and a scaling pass over the tensor."""
    return Work(vector_ops=3 * math.prod(shapes.of(node.output[0])), in_bytes=shapes.bytes(node.input[0]),
                out_bytes=shapes.bytes(node.output[0]))


def move(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Data movement (Transpose, Concat, Resize, Pad, Slice): one pass over the output."""
    return Work(vector_ops=math.prod(shapes.of(node.output[0])),
                in_bytes=sum(shapes.bytes(i) for i in node.input if i and i not in weights),
                out_bytes=sum(shapes.bytes(o) for o in node.output if o))


def free(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    """Metadata-only (Reshape, Flatten, Squeeze): no work, the layout is reinterpreted."""
    return Work()


Rule = Callable[[onnx.NodeProto, Shapes, dict[str, int]], Work]
