"""The compiled kernels of ``_simd.c``, behind checks that keep them to what they handle.

Each function returns a new array, or None when the extension is not built (a machine without
a C compiler at install) or the tensor is not one the kernel takes; the operator then runs its
onnxruntime or numpy kernel, which gives the same bits, only slower.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["available", "dequantize", "pad_byte", "quantize", "to_interleaved", "to_planar"]

_simd: Any
try:
    import npusim.client.ops._simd as _simd  # type: ignore[no-redef]
except ImportError:  # not compiled here: the slower kernels serve
    _simd = None


def available() -> dict[str, bool] | None:
    """The SIMD extensions the kernels use here, or None without the extension."""
    return None if _simd is None else dict(_simd.features())


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray | None:
    """float32 → int8: ``clamp(rint(x / scale) + zero_point)``, bit for bit the numpy kernel's."""
    return _elementwise(_simd and _simd.quantize, x, np.float32, np.int8, scale, zero_point)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray | None:
    """int8 → float32: ``(q - zero_point) * scale``."""
    return _elementwise(_simd and _simd.dequantize, q, np.int8, np.float32, scale, zero_point)


def _elementwise(kernel: Any, x: np.ndarray, src: type, dst: type, scale: float, zero_point: int) -> np.ndarray | None:
    if kernel is None or x.dtype != src:
        return None
    if not x.flags.c_contiguous:  # a strided view: one copy, still faster than any other kernel
        x = np.ascontiguousarray(x)
    y = np.empty(x.shape, dst)
    kernel(x, y, scale, zero_point)
    return y


def pad_byte(value: object, dtype: np.dtype) -> int | None:
    """A padding value as the byte a one-byte dtype stores, or None (wider dtypes, or a value the
    dtype cannot hold exactly: the numpy path decides what those do)."""
    if dtype.itemsize != 1:
        return None
    if type(value) is int:  # the usual case (a zero point): cached (floats are not: 0.0 == -0.0)
        return _int_pad_byte(value, dtype)
    if not isinstance(value, (float, bool, np.number)):
        return None
    return _pad_byte(value, dtype)


@lru_cache(maxsize=64)
def _int_pad_byte(value: int, dtype: np.dtype) -> int | None:
    return _pad_byte(value, dtype)


def _pad_byte(value: object, dtype: np.dtype) -> int | None:
    try:
        v = np.array(value, dtype=dtype)
    except (OverflowError, ValueError, TypeError):
        return None
    return int(v.view(np.uint8)) if v == value else None


def to_planar(x: np.ndarray, wp: int, pad: int) -> np.ndarray | None:
    """Bytes ``(m, w, c)`` → ``(m, c, wp)``, columns ``w:`` set to ``pad`` (its low byte)."""
    if _simd is None or x.dtype.itemsize != 1 or x.ndim != 3 or not x.flags.c_contiguous or not x.size:
        return None
    m, w, c = x.shape
    y = np.empty((m, c, wp), x.dtype)
    _simd.to_planar(x.view(np.uint8), y.view(np.uint8), m, w, c, wp, pad)
    return y


def to_interleaved(z: np.ndarray, w: int) -> np.ndarray | None:
    """Bytes ``(m, c, wp)`` → ``(m, w, c)``: the first ``w`` columns, interleaved."""
    if _simd is None or z.dtype.itemsize != 1 or z.ndim != 3 or not z.flags.c_contiguous or not z.size:
        return None
    m, c, wp = z.shape
    y = np.empty((m, w, c), z.dtype)
    _simd.to_interleaved(z.view(np.uint8), y.view(np.uint8), m, w, c, wp)
    return y
