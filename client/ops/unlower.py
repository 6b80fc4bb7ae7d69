from __future__ import annotations

import numpy as np

import npusim.client.ops._native as _native
from npusim.client.ops._transpose import to_interleaved
from npusim.client.ops.base import CpuOperator
from npusim.services import layout


def _unlower_nhwc(y: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """``N,H,C,Wp`` → NHWC: each row's (C, W) matrix (padding dropped) transposed to (W, C), all rows in one call.

    Same result as ``layout.unlower``, whose transposed copy runs an inner loop of length C
    (≈35× a memcpy for an RGB image). Bytes go through the compiled kernel (≈1.5× a memcpy);
    without it, through numpy's per-channel copies (``_transpose``).
    """
    n, h, w, c = shape
    if y.shape != (n, h, c, layout.padded(w)):
        raise ValueError(f"lowered tensor has shape {y.shape}, expected {(n, h, c, layout.padded(w))}")
    if (x := _native.to_interleaved(y.reshape(n * h, c, y.shape[-1]), w)) is not None:
        return x.reshape(shape)
    return to_interleaved(y[..., :w].reshape(n * h, c, w)).reshape(shape)


class Unlower(CpuOperator):
    """The NPU's lowered ``N,H,C,Wp`` layout → the model's logical output layout."""

    name = "Unlower"
    required = ("axes", "shape")

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, tuple(self.attrs["shape"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(self.attrs["shape"])
        if self.attrs["axes"] == "NHWC" and len(shape) == 4:
            return _unlower_nhwc(x, shape)
        return layout.unlower(x, self.attrs["axes"], shape)
