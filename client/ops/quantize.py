from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator


def _quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    y = np.multiply(x, np.float32(1.0 / scale), dtype=np.float32)
    np.rint(y, out=y)
    y += np.float32(zero_point)
    np.clip(y, -128, 127, out=y)
    return y.astype(np.int8)


class Quantize(CpuOperator):
    """float32 → int8 with the input tensor's calibrated scale and zero point."""

    name = "Quantize"
    required = ("scale", "zero_point")

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.int8), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        return _quantize(x, self.attrs["scale"], self.attrs["zero_point"])
