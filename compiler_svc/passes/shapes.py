"""Static shapes: the NPU compiles for fixed sizes, so dynamic dims are fixed up front."""

from __future__ import annotations

import onnx

from compiler_svc.passes._context import PassContext
from services.errors import InvalidModel


def fix_input_shapes(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """Batch (dim 0) → 1 unless given; any other dynamic dim must come from ``input_shapes``."""
    shapes = dict(ctx.input_shapes)
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
                d.dim_value = 1  # batch: compile() scales it with batch_size
            else:
                raise InvalidModel(f"input {vi.name!r} has a dynamic dimension {i} ({d.dim_param or '?'!r}) that "
                                   f"cannot be fixed: pass input_shapes={{{vi.name!r}: [...]}} (npusim compile "
                                   f"--input-shape {vi.name}=D0,D1,...)")
    if shapes:
        raise InvalidModel(f"input_shapes names unknown inputs: {', '.join(shapes)}")
    # Outputs and intermediate shapes are re-derived from the fixed inputs.
    del m.graph.value_info[:]
    for vo in m.graph.output:
        vo.type.tensor_type.ClearField("shape")
    return m


def infer_shapes(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise InvalidModel(f"shape inference failed: {e}") from None
