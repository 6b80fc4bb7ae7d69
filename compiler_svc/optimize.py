"""Graph clean-up before calibration: target opset, fixed shapes, named nodes.

The full pass list (constant folding, BatchNormalization fusion, Identity removal) grows
here as one pass per function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import version_converter

from compiler_svc.loader import opset_of
from services.errors import InvalidModel

__all__ = ["optimize_model"]


def optimize_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                   opset_version: int = 13) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if opset_of(m) != opset_version:
        try:
            m = version_converter.convert_version(m, opset_version)
        except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            raise InvalidModel(f"cannot convert the model from opset {opset_of(model)} to {opset_version}: {e}") from None
    _fix_input_shapes(m, dict(input_shapes or {}))
    _name_nodes(m)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise InvalidModel(f"shape inference failed: {e}") from None
    return m


def _fix_input_shapes(m: onnx.ModelProto, shapes: dict[str, Sequence[int]]) -> None:
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if vi.name in shapes:
            want = list(shapes.pop(vi.name))
            if len(want) != len(dims):
                raise InvalidModel(f"input_shapes[{vi.name!r}] has {len(want)} dims but the input has {len(dims)}")
            for d, v in zip(dims, want):
                d.Clear()
                d.dim_value = int(v)
            continue
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if i == 0:
                d.Clear()
                d.dim_value = 1  # batch: the program's batch_size scales it later
            else:
                label = d.dim_param or "?"
                raise InvalidModel(f"input {vi.name!r} has a dynamic dimension {i} ({label!r}) that cannot be fixed; "
                                   f"pass input_shapes={{{vi.name!r}: [...]}}")
    if shapes:
        raise InvalidModel(f"input_shapes names unknown inputs: {', '.join(shapes)}")


def _name_nodes(m: onnx.ModelProto) -> None:
    used = {n.name for n in m.graph.node if n.name}
    for i, n in enumerate(m.graph.node):
        if not n.name:
            name = f"{n.op_type.lower()}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
