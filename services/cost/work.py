"""What one NPU operator asks of the chip, and the static tensor shapes a rule reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from services.errors import CompileError

__all__ = ["Gemm", "Shapes", "Work"]


@dataclass(frozen=True)
class Gemm:
    """A MAC operator as the matrix product one image makes: for each of ``groups`` groups,
    ``pixels`` (= rows x width) outputs per channel, ``cout`` channels, ``depth`` terms each.

    ``rows`` and ``width`` keep the output's spatial shape because the array can take its 32
    lanes along the width of a lowered row (services/layout.py) instead of along channels."""

    rows: int
    width: int
    cout: int  # output channels per group
    depth: int  # reduction terms per output
    groups: int = 1

    @property
    def pixels(self) -> int:
        return self.rows * self.width

    @property
    def macs(self) -> int:
        return self.groups * self.pixels * self.cout * self.depth


@dataclass
class Work:
    """An operator's demand for one job of ``images`` images.

    Byte counts are for the whole job; ``gemm`` and ``vector_ops`` are per image, because the
    compiler runs one image's schedule once per image of the batch (docs/timing-model.md)."""

    kind: str  # "mac" | "vector" | "free"
    images: int = 1
    gemm: Gemm | None = None
    vector_ops: int = 0  # element operations per image on the vector lanes
    weight_bytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    pieces: int = 1  # NPU operators it is split into (grouped Conv beyond the group limit)
    elementwise: bool = False  # may run in the vector stage of the operator that makes its input

    @property
    def macs(self) -> int:
        return self.images * self.gemm.macs if self.gemm else 0


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

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    def bytes(self, name: str) -> int:
        return math.prod(self.of(name)) if name in self._shapes else 0
