from __future__ import annotations

import numpy as np

from npusim.client.ops.base import CpuOperator


def _shift(x: np.ndarray) -> np.ndarray:
    # u8 ^ 0x80 reinterpreted as int8 is u8 − 128: one pass at memory speed, no float.
    return np.bitwise_xor(x, np.uint8(0x80)).view(np.int8)


class QuantizeUint8(CpuOperator):
    """uint8 → int8 for a model quantised with ``with_quantize=False``: a shift by 128."""

    name = "QuantizeUint8"
    span_name = "Quantize"

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return np.dtype(np.int8), shape

    def _run(self, x: np.ndarray) -> np.ndarray:
        return _shift(x)
