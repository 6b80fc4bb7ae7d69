from __future__ import annotations

import numpy as np

import npusim.client.ops._native as _native
from npusim.client.ops.base import CpuOperator
from npusim.services import layout


class Slice(CpuOperator):
    """Drop the width padding the NPU's Unlower leaves on an output."""

    name = "Slice"
    required = ("length",)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, shape[:-1] + (self.attrs["length"],)

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = self.attrs["length"]
        if x.size and isinstance(n, int) and 0 <= n <= x.shape[-1]:
            y = _native.to_interleaved(x.reshape(-1, 1, x.shape[-1]), n)  # one row copy each
            if y is not None:
                return y.reshape(x.shape[:-1] + (n,))
        return np.ascontiguousarray(layout.slice_last(x, self.attrs["length"]))
