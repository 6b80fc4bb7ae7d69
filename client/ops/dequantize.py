from __future__ import annotations

import numpy as np

import npusim.client.ops._native as _native
from npusim.client.ops.base import CpuOperator
from npusim.client.ops.quantize import kernel_constants


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    y = q.astype(np.float32)
    y -= np.float32(zero_point)
    y *= np.float32(scale)
    return y


class Dequantize(CpuOperator):
    """int8 → float32: ``(q - zero_point) * scale``.

    The difference is exact in float32, so the one rounding is the product's: the same as
    onnxruntime's DequantizeLinear. An int8 tensor goes through the compiled kernel (one AVX2
    pass); anything else, or a host without the extension, through numpy (a cast and two
    arithmetic passes), which is also the compiled kernel's test oracle.
    """

    name = "Dequantize"
    required = ("scale", "zero_point")

    def __init__(self, **attrs: object) -> None:
        super().__init__(**attrs)
        self._constants = kernel_constants(self.attrs["scale"], self.attrs["zero_point"])

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.float32), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._constants is not None and (y := _native.dequantize(x, *self._constants)) is not None:
            return y
        return _dequantize(x, self.attrs["scale"], self.attrs["zero_point"])
