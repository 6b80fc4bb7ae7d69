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
    out = shapes.of(node.output[0])
    group = int(attr(node, "group", 1))  # type: ignore[arg-type]
    if node.op_type == "ConvTranspose":
        macs = math.prod(shapes.of(node.input[0])) * w[1] * k
        cout, depth = w[1] * group, w[0] // group * k
    else:
        macs = math.prod(out) * w[1] * k
        cout, depth = w[0], w[1] * k
    rows = out[0] * (out[2] if len(out) > 2 else 1)
    width = out[-1] if len(out) > 2 else 1
    # lanes along the output width (one unit per row and channel), or along the output
    # channels (one unit per row, column and group of 32 channels)
    return Work(macs=macs, weight_bytes=weights.get(node.input[1], 0),
                in_bytes=shapes.bytes(node.input[0]), out_bytes=shapes.bytes(node.output[0]),
                mappings=((width, rows * cout), (max(cout // group, 1), rows * width * group * -(-cout // group // 32))),
                depth=depth)


def gemm(node: onnx.NodeProto, shapes: Shapes, weights: dict[str, int]) -> Work:
    a = shapes.of(node.input[0])
    out = shapes.of(node.output[0])
    k = a[-1] if not int(attr(node, "transA", 0)) else a[-2]  # type: ignore[arg-type]
    m = out[-1] if out else 1
    return Work(macs=math.prod(out) * k, weight_bytes=sum(weights.get(i, 0) for i in node.input[1:]),
                in_bytes=shapes.bytes(node.input[0]), out_bytes=shapes.bytes(node.output[0]),
                mappings=((m, max(math.prod(out[:-1]), 1) * -(-m // 32)),), depth=k)


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
