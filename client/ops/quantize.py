from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator


def _quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    # Divide, not multiply by 1/scale: onnxruntime's QuantizeLinear divides, and the rounded
    # reciprocal moves values that sit on a .5 tie (or next to one) to the other integer.
    # One float32 buffer, every later pass in place: the only other allocation is the output.
    y = np.empty(x.shape, dtype=np.float32)
    np.divide(x, np.float32(scale), out=y)
    np.rint(y, out=y)  # half to even, as onnxruntime rounds
    y += np.float32(zero_point)
    np.clip(y, -128, 127, out=y)
    return y.astype(np.int8)


class Quantize(CpuOperator):
    """float32 → int8 with the input tensor's calibrated scale and zero point.

    ``clip(rint(x / scale) + zero_point, -128, 127)`` in float32 — bit for bit what
    onnxruntime's QuantizeLinear computes, so a program's output equals the quantised model's.
    """

    name = "Quantize"
    required = ("scale", "zero_point")

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.int8), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        return _quantize(x, self.attrs["scale"], self.attrs["zero_point"])
