from __future__ import annotations

import math

import numpy as np

import npusim.client.ops._native as _native
from npusim.client.ops.base import CpuOperator


def _quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    # Divide, not multiply by 1/scale: onnxruntime's QuantizeLinear divides, and the rounded
    # reciprocal moves values that sit on a .5 tie (or next to one) to the other integer.
    # One float32 buffer, every later pass in place: the only other allocation is the output.
    y = np.empty(x.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # ±inf clamps and NaN becomes -128 below: not errors
        np.divide(x, np.float32(scale), out=y)
    np.rint(y, out=y)  # half to even, as onnxruntime rounds
    y += np.float32(zero_point)
    # fmax/fmin, not clip: a NaN becomes -128, as onnxruntime's clamp (MAXPS) makes it, instead
    # of whatever the float→int8 cast of a NaN happens to give
    np.fmax(y, np.float32(-128), out=y)
    np.fmin(y, np.float32(127), out=y)
    return y.astype(np.int8)


def kernel_constants(scale: object, zero_point: object) -> tuple[float, int] | None:
    """The constants the compiled kernels take (a float32 scale, an int8 zero point), or None when
    they cannot (a zero point outside int8, a scale that is not a positive finite float32)."""
    try:
        s, zp = float(np.float32(scale)), int(zero_point)
    except (TypeError, ValueError, OverflowError):
        return None  # not numbers: the numpy kernel reports it when it runs, as it always did
    if not (math.isfinite(s) and s > 0) or zp != zero_point or not -128 <= zp <= 127:
        return None
    return s, zp


class Quantize(CpuOperator):
    """float32 → int8 with the input tensor's calibrated scale and zero point.

    ``clip(rint(x / scale) + zero_point, -128, 127)`` in float32 — bit for bit what
    onnxruntime's QuantizeLinear computes, so a program's output equals the quantised model's.
    A float32 tensor goes through the compiled kernel (``_native``: one AVX2 pass, about a
    memcpy of the input); anything else, or a host without the extension, through the numpy
    kernel above, which is also the compiled kernel's test oracle.
    """

    name = "Quantize"
    required = ("scale", "zero_point")

    def __init__(self, **attrs: object) -> None:
        super().__init__(**attrs)
        self._constants = kernel_constants(self.attrs["scale"], self.attrs["zero_point"])

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.int8), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._constants is not None and (y := _native.quantize(x, *self._constants)) is not None:
            return y
        return _quantize(x, self.attrs["scale"], self.attrs["zero_point"])
