"""The work of one NPU operator, and the tensor shapes a rule reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from services.errors import CompileError


@dataclass
class Work:
    """What one operator asks of the chip. ``mappings``/``depth`` say how its MACs can map onto
    the array (see ``model.array_fill``): each mapping is (items over a slice's 32 lanes,
    independent units over the slices); the reduction depth goes over the 4 MAC rows."""

    macs: int = 0
    vector_ops: int = 0
    weight_bytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    mappings: tuple[tuple[int, int], ...] = ((32, 1 << 20),)  # the compiler takes the best filled
    depth: int = 4


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
