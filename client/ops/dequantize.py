from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    y = q.astype(np.float32)
    y -= np.float32(zero_point)
    y *= np.float32(scale)
    return y


class Dequantize(CpuOperator):
    """int8 → float32: ``(q - zero_point) * scale``."""

    name = "Dequantize"
    required = ("scale", "zero_point")

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.float32), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        return _dequantize(x, self.attrs["scale"], self.attrs["zero_point"])
