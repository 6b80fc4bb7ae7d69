from __future__ import annotations

import numpy as np

from client.ops.base import CpuOperator
from services import layout


class Lower(CpuOperator):
    """Logical layout (e.g. NHWC) → the NPU's lowered ``N,H,C,Wp`` layout."""

    name = "Lower"
    required = ("axes",)

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        return dtype, layout.lowered_shape(shape, self.attrs["axes"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return layout.lower(x, self.attrs["axes"], self.attrs.get("value", 0))
