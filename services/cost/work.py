"""What one NPU operator asks of the chip, and the static tensor shapes a rule reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from npusim.services.errors import CompileError
from npusim.services.layout import padded

__all__ = ["QDQ", "Gemm", "Shapes", "Work"]

QDQ = ("QuantizeLinear", "DequantizeLinear")
"""Part of the chip's int8 kernels: they cost nothing of their own, and their output is their
input's tensor on the chip."""


@dataclass(frozen=True)
class Gemm:
    """A MAC operator as the matrix products one image makes: for each of ``groups`` groups,
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

    Byte counts and ``macs`` are for the whole job; ``gemm`` and ``vector_ops`` are per image,
    because the compiler runs one image's schedule once per image of the batch
    (docs/timing-model.md)."""

    kind: str  # "mac" | "vector" | "free"
    images: int = 1
    gemm: Gemm | None = None
    vector_ops: int = 0  # element operations per image on the vector lanes
    weight_bytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    pieces: int = 1  # NPU operators it is split into (grouped Conv beyond the group limit)
    elementwise: bool = False  # may run in the vector stage of the operator that makes its input
    macs: int = 0


class Shapes:
    """Static shapes of every tensor of a shape-inferred graph (int8: 1 byte per element), and
    how many images of the job's batch each holds."""

    def __init__(self, model: onnx.ModelProto, batch: int = 1) -> None:
        self.batch = max(int(batch), 1)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self._shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        for init in model.graph.initializer:
            self._shapes[init.name] = tuple(init.dims)

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    def of(self, name: str) -> tuple[int, ...]:
        try:
            return self._shapes[name]
        except KeyError:
            raise CompileError(f"tensor {name!r} has no static shape; fix the input shapes "
                               "(optimize_model(model, input_shapes=...))") from None

    def bytes(self, name: str) -> int:
        return math.prod(self.of(name)) if name in self._shapes else 0

    def images(self, name: str) -> int:
        """The images of the batch a tensor holds: the batch when its first axis is the batch's
        (a multiple of it), else 1 (a tensor every image shares)."""
        dims = self._shapes.get(name, ())
        return self.batch if len(dims) >= 2 and dims[0] % self.batch == 0 else 1

    def stored(self, name: str, lanes: int) -> int:
        """The bytes the chip stores for one image of the tensor: an activation of 3 or 4 axes is
        kept as rows whose last axis is padded to the lane width (the lowered layout)."""
        if name not in self._shapes:
            return 0
        dims = self._shapes[name]
        size = math.prod(dims[:-1]) * padded(dims[-1], lanes) if len(dims) in (3, 4) else math.prod(dims)
        return size // self.images(name)
