"""The work of one NPU operator, and the tensor shapes a rule reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from services.errors import CompileError


@dataclass
class Work:
    """What one operator asks of the chip. ``lanes``/``depth``/``units`` say how its MACs map
    onto the array (see ``model.fill``): output columns over a slice's 32 lanes, reduction
    depth over its 4 MAC rows, independent output rows over the slices."""

    macs: int = 0
    vector_ops: int = 0
    weight_bytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    lanes: tuple[int, ...] = (32,)  # candidate lane mappings; the compiler takes the best filled
    depth: int = 4
    units: int = 1 << 20


class Shapes:
    """Static shapes of every tensor of a shape-inferred graph (int8: 1 byte per element)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._shapes: dict[str, tuple[int, ...]] = {}
        for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self._shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        for init in model.graph.initializer:
            self._shapes[init.name] = tuple(init.dims)

    def of(self, name: str) -> tuple[int, ...]:
        try:
            return self._shapes[name]
        except KeyError:
            raise CompileError(f"tensor {name!r} has no static shape; fix the input shapes "
                               "(optimize_model(model, input_shapes=...))") from None

    def bytes(self, name: str) -> int:
        return math.prod(self.of(name)) if name in self._shapes else 0
