"""Split a quantised graph into CPU pre-operators, the NPU part and CPU post-operators.

The rules, from the seed:

- a float input is quantised on the CPU (``Quantize``); a float output dequantised (``Dequantize``);
- ``Lower``/``Unlower`` run on the NPU when the tensor's last axis is the width and a
  multiple of 32; when the last axis is the width but not a multiple of 32 a CPU ``Pad``
  precedes the NPU Lower (and a CPU ``Slice`` follows the NPU Unlower); otherwise the whole
  Lower/Unlower is a CPU operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from compiler_svc.graph import toposort
from services.errors import UnsupportedOperator
from services.layout import LANE, default_axes, lowered_shape, padded, width_is_last
from services.program import CpuOp, TensorSpec

__all__ = ["Boundary", "Partition", "partition"]

_ONNX_DTYPE = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}


@dataclass
class Boundary:
    """One model input or output and everything the program needs to know about it."""

    user: TensorSpec  # what the user gives / gets
    graph: TensorSpec  # the int8 tensor of the NPU graph
    device: TensorSpec  # as it crosses PCIe, after the CPU operators
    cpu_ops: list[CpuOp]
    npu_layout_bytes: int  # bytes the NPU's own Lower/Unlower moves (0 if the CPU does it)


@dataclass
class Partition:
    inputs: list[Boundary]
    outputs: list[Boundary]
    npu_model: onnx.ModelProto


def _shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)


def _scalar(inits: dict[str, np.ndarray], name: str) -> float | int:
    arr = inits[name]
    if arr.size != 1:
        raise UnsupportedOperator(f"{name!r} is per-channel; boundary tensors must be quantised per tensor")
    return arr.reshape(()).item()


def _axes_from_consumers(model: onnx.ModelProto, tensor: str, ndim: int) -> str:
    """Guess the logical axes of an input from the float operators it feeds."""
    frontier, seen = [tensor], set()
    while frontier:
        t = frontier.pop()
        seen.add(t)
        for n in model.graph.node:
            if t not in n.input:
                continue
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                frontier.extend(o for o in n.output if o not in seen)
            elif n.op_type == "Transpose" and ndim == 4:
                perm = [a.ints for a in n.attribute if a.name == "perm"]
                if perm and list(perm[0]) == [0, 3, 1, 2]:
                    return "NHWC"
            elif n.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool") and ndim == 4:
                return "NCHW"
    return default_axes(ndim)


def _axes_from_producer(model: onnx.ModelProto, tensor: str, ndim: int) -> str:
    producers = {o: n for n in model.graph.node for o in n.output}
    t = tensor
    while (n := producers.get(t)) is not None and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
        t = n.input[0]
    if n is not None and n.op_type == "Transpose" and ndim == 4:
        perm = [a.ints for a in n.attribute if a.name == "perm"]
        if perm and list(perm[0]) == [0, 2, 3, 1]:
            return "NHWC"
    return default_axes(ndim)


def _place_input(user: TensorSpec, graph: TensorSpec, quant: CpuOp) -> Boundary:
    ops = [quant]
    zp = graph.pad
    w = user.shape[-1]
    if width_is_last(user.axes) and w % LANE == 0:
        device = graph
        layout_bytes = graph.size
    elif width_is_last(user.axes):
        ops.append(CpuOp("Pad", {"multiple": LANE, "value": zp},
                         f"width {w} is not a multiple of {LANE}: the NPU lowers only aligned rows"))
        device = TensorSpec(graph.name, "int8", graph.shape[:-1] + (padded(w),), user.axes, "padded", zp)
        layout_bytes = device.size
    else:
        ops.append(CpuOp("Lower", {"axes": user.axes, "value": zp},
                         f"the last axis of {user.axes} is not the width: the NPU cannot lower it"))
        device = TensorSpec(graph.name, "int8", lowered_shape(graph.shape, user.axes), user.axes, "lowered", zp)
        layout_bytes = 0
    return Boundary(user, graph, device, ops, layout_bytes)


def _place_output(user: TensorSpec, graph: TensorSpec, dequant: CpuOp) -> Boundary:
    zp = graph.pad
    w = user.shape[-1] if user.shape else 1
    if width_is_last(user.axes) and w % LANE == 0:
        return Boundary(user, graph, graph, [dequant], graph.size)
    if width_is_last(user.axes):
        device = TensorSpec(graph.name, "int8", graph.shape[:-1] + (padded(w),), user.axes, "padded", zp)
        op = CpuOp("Slice", {"length": w}, f"width {w} is not a multiple of {LANE}: drop the NPU's row padding")
        return Boundary(user, graph, device, [op, dequant], device.size)
    device = TensorSpec(graph.name, "int8", lowered_shape(graph.shape, user.axes), user.axes, "lowered", zp)
    op = CpuOp("Unlower", {"axes": user.axes, "shape": list(user.shape)},
               f"the last axis of {user.axes} is not the width: the NPU cannot unlower it")
    return Boundary(user, graph, device, [op, dequant], 0)


def partition(qmodel: onnx.ModelProto) -> Partition:
    """Cut the boundary Quantize/Dequantize nodes out of ``qmodel`` and place layout ops."""
    model = onnx.shape_inference.infer_shapes(qmodel)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producers[o] = n
    removed: list[onnx.NodeProto] = []
    inputs, outputs = [], []
    for vi in [v for v in g.input if v.name not in inits]:
        shape = _shape(vi)
        dtype = _ONNX_DTYPE.get(vi.type.tensor_type.elem_type)
        qs = consumers.get(vi.name, [])
        if dtype != "float32" or len(qs) != 1 or qs[0].op_type != "QuantizeLinear":
            raise UnsupportedOperator(f"input {vi.name!r} ({dtype}) is not quantised by a single QuantizeLinear; "
                                      "quantise the model with compiler_svc.quantize first")
        q = qs[0]
        scale, zp = float(_scalar(inits, q.input[1])), int(_scalar(inits, q.input[2]))
        axes = _axes_from_consumers(model, vi.name, len(shape))
        user = TensorSpec(vi.name, dtype, shape, axes)
        graph = TensorSpec(q.output[0], "int8", shape, axes, "logical", zp)
        quant = CpuOp("Quantize", {"scale": scale, "zero_point": zp},
                      "the NPU computes in int8 and this input is float32")
        inputs.append(_place_input(user, graph, quant))
        removed.append(q)
    for vo in g.output:
        shape = _shape(vo)
        dq = producers.get(vo.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise UnsupportedOperator(f"output {vo.name!r} is not produced by a DequantizeLinear: the operator "
                                      f"{dq.op_type if dq else '?'} that makes it is not quantised")
        scale, zp = float(_scalar(inits, dq.input[1])), int(_scalar(inits, dq.input[2]))
        axes = _axes_from_producer(model, dq.input[0], len(shape))
        user = TensorSpec(vo.name, "float32", shape, axes)
        graph = TensorSpec(dq.input[0], "int8", shape, axes, "logical", zp)
        dequant = CpuOp("Dequantize", {"scale": scale, "zero_point": zp},
                        "the model's output is float32 and the NPU produces int8")
        outputs.append(_place_output(user, graph, dequant))
        removed.append(dq)
    return Partition(inputs, outputs, _npu_model(model, inputs, outputs, removed))


def _npu_model(model: onnx.ModelProto, inputs: list[Boundary], outputs: list[Boundary],
               removed: list[onnx.NodeProto]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    drop = {n.output[0] for n in removed}
    kept = [n for n in g.node if n.output[0] not in drop]
    del g.node[:]
    g.node.extend(kept)
    del g.input[:]
    del g.output[:]
    g.input.extend(onnx.helper.make_tensor_value_info(b.graph.name, onnx.TensorProto.INT8, list(b.graph.shape))
                   for b in inputs)
    g.output.extend(onnx.helper.make_tensor_value_info(b.graph.name, onnx.TensorProto.INT8, list(b.graph.shape))
                    for b in outputs)
    used = {i for n in g.node for i in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    toposort(g)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m)
    return m
