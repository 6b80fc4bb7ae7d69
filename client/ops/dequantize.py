from __future__ import annotations

import numpy as np

import client.ops._native as _native
from client.ops._ort import dequantize_linear
from client.ops.base import CpuOperator
from client.ops.quantize import ORT_MIN_SIZE, _ort_constants


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    y = q.astype(np.float32)
    y -= np.float32(zero_point)
    y *= np.float32(scale)
    return y


class Dequantize(CpuOperator):
    """int8 → float32: ``(q - zero_point) * scale``.

    The difference is exact in float32, so the one rounding is the product's: the same as
    onnxruntime's DequantizeLinear. An int8 tensor goes through the compiled kernel (one AVX2
    pass); without it, a large one through DequantizeLinear (one fused pass instead of numpy's
    cast and two arithmetic passes over the 4× larger float output).
    """

    name = "Dequantize"
    required = ("scale", "zero_point")

    def __init__(self, **attrs: object) -> None:
        super().__init__(**attrs)
        self._ort = _ort_constants(self.attrs["scale"], self.attrs["zero_point"])

    def warm(self) -> None:
        if self._ort is not None and _native.available() is None:
            dequantize_linear(*self._ort)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.float32), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._ort is not None and (y := _native.dequantize(x, *self._ort)) is not None:
            return y
        if self._ort is not None and x.dtype == np.int8 and x.size >= ORT_MIN_SIZE:
            return dequantize_linear(*self._ort).run(None, {"x": x})[0]
        return _dequantize(x, self.attrs["scale"], self.attrs["zero_point"])
