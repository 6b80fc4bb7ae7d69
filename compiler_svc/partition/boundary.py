"""The type conversions at the program's edges: host Quantize before, host Dequantize after.

- a float input quantised by a QuantizeLinear → host ``Quantize`` (float32 → int8);
- a uint8 input (``with_quantize=False``) → host ``QuantizeUint8``, a shift by 128;
- an output made by a DequantizeLinear → host ``Dequantize`` (int8 → float32);
- a uint8/int8 output (``normalized_pixel_outputs``, ``convert_output_type``) → nothing.

The QDQ nodes these replace are cut out of the graph; what remains computes on the int8
tensors the host operators produce and consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from npusim.compiler_svc.graph import GraphIndex, dims, perm
from npusim.services.errors import InvalidModel
from npusim.services.program import OpStep

__all__ = ["Edge", "convert_inputs", "convert_outputs", "dtype_name"]


def dtype_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


@dataclass
class Edge:
    """One program input or output: its user-facing name/dtype/shape, the host operator that
    converts it (if any), and the tensor inside the graph it becomes (or comes from)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    op: OpStep | None
    inner: str  # the graph tensor on the other side of ``op`` (== name when there is no op)
    source_axes: str | None = None  # NHWC when the host holds ``inner`` transposed (see convert_inputs)


def _scalar(idx: GraphIndex, name: str) -> float | int:
    arr = idx.consts.get(name)
    if arr is None or arr.size != 1:
        raise InvalidModel(f"{name!r} must be a per-tensor constant at the program boundary")
    return arr.reshape(()).item()


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return dtype_name(vi.type.tensor_type.elem_type)


def _only_reader(idx: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    readers = idx.readers(tensor)
    return readers[0] if len(readers) == 1 else None


def convert_inputs(m: onnx.ModelProto, idx: GraphIndex) -> list[Edge]:
    """Cut the input conversions out of ``m``; returns one Edge per program input.

    A model whose first operator turns an NHWC input into NCHW keeps taking NHWC: that
    Transpose is absorbed into the input's host Lower (the edge's ``source_axes``).
    ``idx`` describes ``m`` before the cut; every input's nodes are its own."""
    graph = m.graph
    outputs = {o.name for o in graph.output}
    edges = []
    for vi in [v for v in graph.input if v.name not in idx.consts]:
        dtype, shape = _dtype(vi), dims(vi)
        first = _only_reader(idx, vi.name)
        lead = first if first is not None and first.op_type == "Transpose" and len(shape) == 4 \
            and perm(first) == [0, 3, 1, 2] and first.output[0] not in outputs else None
        entry = lead.output[0] if lead is not None else vi.name
        one = _only_reader(idx, entry)
        if dtype == "float32" and one is not None and one.op_type == "QuantizeLinear" and len(one.input) > 2:
            op = OpStep("Quantize", {"scale": float(_scalar(idx, one.input[1])),
                                     "zero_point": int(_scalar(idx, one.input[2]))}, vi.name, one.output[0],
                        "the NPU computes in int8 and this input is float32 (quantize with with_quantize=False "
                        "to take uint8)")
            removed = [one]
        elif dtype == "uint8" and one is not None and one.op_type == "DequantizeLinear":
            q = _only_reader(idx, one.output[0])
            if q is None or q.op_type != "QuantizeLinear":
                raise InvalidModel(f"uint8 input {vi.name!r} is not requantised to int8; quantize() makes this form")
            zp_u8, zp_i8 = int(_scalar(idx, one.input[2])), int(_scalar(idx, q.input[2]))
            if zp_u8 - zp_i8 != 128 or not np.isclose(_scalar(idx, one.input[1]), _scalar(idx, q.input[1])):
                raise InvalidModel(f"uint8 input {vi.name!r} does not map exactly onto int8 (u8 = i8 + 128)")
            op = OpStep("QuantizeUint8", {}, vi.name, q.output[0],
                        "the NPU computes in int8: uint8 → int8 is a shift by 128")
            removed = [one, q]
        else:
            edges.append(Edge(vi.name, dtype, shape, None, vi.name))
            continue
        if any(n.output[0] in outputs for n in removed):
            edges.append(Edge(vi.name, dtype, shape, None, vi.name))  # the model returns the converted tensor
            continue
        if lead is not None:
            removed.append(lead)
            op = OpStep(op.op, op.attrs, op.input, f"{op.output}:nhwc", op.reason)
        for n in removed:
            graph.node.remove(n)
        edges.append(Edge(vi.name, dtype, shape, op, op.output.removesuffix(":nhwc"),
                          source_axes="NHWC" if lead is not None else None))
    return edges


def convert_outputs(m: onnx.ModelProto, idx: GraphIndex) -> list[Edge]:
    """Cut the output Dequantize nodes out of ``m``; returns one Edge per program output.

    An output that later operators also read keeps a renamed DequantizeLinear for them,
    so what leaves the NPU is still the int8 tensor and the host does the Dequantize."""
    graph = m.graph
    inputs = {i.name for i in graph.input}
    edges: dict[str, Edge] = {}
    for vo in graph.output:
        if vo.name in edges:  # the same tensor listed twice: one edge serves both
            continue
        dtype, shape = _dtype(vo), dims(vo)
        dq = idx.producers.get(vo.name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dtype == "float32" and len(dq.input) > 2 \
                and dq.input[0] not in inputs:
            op = OpStep("Dequantize", {"scale": float(_scalar(idx, dq.input[1])),
                                       "zero_point": int(_scalar(idx, dq.input[2]))}, dq.input[0], vo.name,
                        "the model's output is float32 and the NPU produces int8 (normalized_pixel_outputs "
                        "returns uint8 instead)")
            readers = idx.readers(vo.name)
            if readers:
                inner = f"{vo.name}_float"
                for n in readers:
                    for i, t in enumerate(n.input):
                        if t == vo.name:
                            n.input[i] = inner
                dq.output[0] = inner
                twin = graph.value_info.add()
                twin.CopyFrom(idx.infos.get(vo.name, vo))
                twin.name = inner
            else:
                graph.node.remove(dq)
            edges[vo.name] = Edge(vo.name, dtype, shape, op, dq.input[0])
        else:
            edges[vo.name] = Edge(vo.name, dtype, shape, None, vo.name)
    return [edges[vo.name] for vo in graph.output]
