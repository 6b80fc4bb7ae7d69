from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator
from services import layout


class Unlower(CpuOperator):
    """The NPU's lowered ``N,H,C,Wp`` layout → the model's logical output layout."""

    name = "Unlower"
    required = ("axes", "shape")

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, tuple(self.attrs["shape"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return layout.unlower(x, self.attrs["axes"], tuple(self.attrs["shape"]))
