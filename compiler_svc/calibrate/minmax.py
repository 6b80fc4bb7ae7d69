"""MIN_MAX: the range every sample stayed inside. Exact for the data seen, outlier-prone."""

from __future__ import annotations

import numpy as np


class MinMaxObserver:
    def __init__(self, *, symmetric: bool, percentage: float = 99.99) -> None:
        self.symmetric = symmetric
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if self.symmetric:
            m = max(-lo, hi)
            return -m, m
        return lo, hi
