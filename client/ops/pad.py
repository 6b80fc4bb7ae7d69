from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator
from services import layout


class Pad(CpuOperator):
    """Pad the width (last axis) to a multiple of 32 so the NPU can lower the tensor itself."""

    name = "Pad"
    required = ("multiple",)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, shape[:-1] + (layout.padded(shape[-1], self.attrs["multiple"]),)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return layout.pad_last(x, self.attrs["multiple"], self.attrs.get("value", 0))
