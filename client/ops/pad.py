from __future__ import annotations

import numpy as np

import npusim.client.ops._native as _native
from npusim.client.ops.base import CpuOperator
from npusim.services import layout


class Pad(CpuOperator):
    """Pad the width (last axis) to a multiple of 32 so the NPU can lower the tensor itself."""

    name = "Pad"
    required = ("multiple",)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, shape[:-1] + (layout.padded(shape[-1], self.attrs["multiple"]),)

    def _run(self, x: np.ndarray) -> np.ndarray:
        value = self.attrs.get("value", 0)
        if x.size and (pad := _native.pad_byte(value, x.dtype)) is not None:
            w = x.shape[-1]
            wp = layout.padded(w, self.attrs["multiple"])
            y = _native.to_planar(x.reshape(-1, w, 1), wp, pad)  # rows copied, padding set: one pass
            if y is not None:
                return y.reshape(x.shape[:-1] + (wp,))
        return layout.pad_last(x, self.attrs["multiple"], value)
