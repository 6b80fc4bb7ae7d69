from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator
from services import layout


class Slice(CpuOperator):
    """Drop the width padding the NPU's Unlower leaves on an output."""

    name = "Slice"
    required = ("length",)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, shape[:-1] + (self.attrs["length"],)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(layout.slice_last(x, self.attrs["length"]))
