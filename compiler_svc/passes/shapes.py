"""Static shapes: the NPU compiles for fixed sizes, so dynamic dims are fixed up front."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from npusim.compiler_svc.passes._context import PassContext
from npusim.services.errors import InvalidModel

__all__ = ["check_input_shapes", "fix_input_shapes", "infer_shapes"]


def check_input_shapes(input_shapes: object) -> dict[str, list[int]]:
    """``input_shapes`` as ``{name: [dims]}``, or InvalidModel saying which entry is malformed.

    Checked before anything is fixed: a float (8.5), a string or a bool would otherwise be
    truncated or crash deep inside numpy, and 0 or a negative size has no meaning on the chip.
    """
    if input_shapes is None:
        return {}
    if not isinstance(input_shapes, Mapping):
        raise InvalidModel(f"input_shapes must map input names to dims, e.g. {{'x': [1, 3, 224, 224]}}; "
                           f"got {type(input_shapes).__name__}")
    out: dict[str, list[int]] = {}
    for name, dims in input_shapes.items():
        if not isinstance(name, str):
            raise InvalidModel(f"input_shapes: key {name!r} is not an input name (a string)")
        if isinstance(dims, np.ndarray) and dims.ndim == 1:
            dims = dims.tolist()
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise InvalidModel(f"input_shapes[{name!r}] must be a list of dims, e.g. [1, 3, 224, 224]; got {dims!r}")
        for i, d in enumerate(dims):
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) < 1:
                raise InvalidModel(f"input_shapes[{name!r}] dim {i} is {d!r}: every dim must be a positive integer")
        out[name] = [int(d) for d in dims]
    return out


def fix_input_shapes(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """Batch (dim 0) → 1 unless given; any other dynamic dim must come from ``input_shapes``.

    ``input_shapes`` sets dynamic dims and the batch. Any other dim the model already fixes is
    refused if the request differs: the weights and constant shapes were made for it, and
    changing it means re-exporting. (A static batch of 1 is an exporter habit, not a property
    of the weights, so dim 0 may change.)
    """
    shapes = check_input_shapes(ctx.input_shapes)
    inits = {i.name for i in m.graph.initializer}
    inputs = [vi.name for vi in m.graph.input if vi.name not in inits]
    unknown = [name for name in shapes if name not in inputs]
    if unknown:  # first: a misspelt name would otherwise surface as that input's unfixed dynamic dim
        raise InvalidModel(f"input_shapes names unknown inputs: {', '.join(unknown)}; the model's inputs are {inputs}")
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if vi.name in shapes:
            want = shapes.pop(vi.name)
            if not vi.type.tensor_type.HasField("shape"):  # rank unknown: the request gives it
                vi.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in want)
            if len(want) != len(dims):
                raise InvalidModel(f"input_shapes[{vi.name!r}] has {len(want)} dims but the input has {len(dims)} "
                                   f"({_show(dims)})")
            for i, (d, v) in enumerate(zip(dims, want)):
                if i > 0 and d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v:
                    raise InvalidModel(f"input_shapes[{vi.name!r}] sets dim {i} to {v}, but the model fixes it at "
                                       f"{d.dim_value} ({_show(dims)}); only the batch (dim 0) and dynamic dims "
                                       "can be set")
            for d, v in zip(dims, want):
                d.Clear()
                d.dim_value = v
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
    # Outputs and intermediate shapes are re-derived from the fixed inputs; an output that is an
    # input is that input (a bare one would make shape inference forget the input's shape).
    del m.graph.value_info[:]
    inputs = {vi.name: vi for vi in m.graph.input}
    for vo in m.graph.output:
        if vo.name in inputs:
            vo.type.CopyFrom(inputs[vo.name].type)
        else:
            vo.type.tensor_type.ClearField("shape")
    return m


def infer_shapes(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise InvalidModel(f"shape inference failed: {e}") from None
    _complete_outputs(m)
    return m


def _complete_outputs(m: onnx.ModelProto) -> None:
    """Type the outputs shape inference leaves bare: it types what nodes make, so an output that
    is a graph input (or an initialiser, or a tensor listed twice) keeps no shape — and onnx's
    checker refuses an output without one. Such an output is that input (that tensor): same type."""
    g = m.graph
    known: dict[str, onnx.TypeProto] = {}
    for vi in list(g.value_info) + list(g.output):
        if vi.type.tensor_type.HasField("shape"):
            known.setdefault(vi.name, vi.type)
    for i in g.initializer:
        known[i.name] = onnx.helper.make_tensor_type_proto(i.data_type, list(i.dims))
    inputs = {vi.name for vi in g.input}
    for vi in g.input:
        known[vi.name] = vi.type  # an output that is an input is that input, whatever it declared
    for vo in g.output:
        if vo.name in known and (vo.name in inputs or not vo.type.tensor_type.HasField("shape")):
            vo.type.CopyFrom(known[vo.name])


def _show(dims: Sequence[onnx.TensorShapeProto.Dimension]) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"
