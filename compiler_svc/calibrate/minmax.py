"""MIN_MAX: the range every sample stayed inside. Exact for the data seen, outlier-prone.

``MIN_MAX_ASYM`` → ``[min(x), max(x)]``; ``MIN_MAX_SYM`` → ``±max|x|`` (both widened to contain
zero). A pure running min/max: two reductions per update, no histogram.
"""

from __future__ import annotations

import math

import numpy as np

from npusim.compiler_svc.calibrate.base import finite_minmax, finish_range


class MinMaxObserver:
    __slots__ = ("symmetric", "lo", "hi")

    def __init__(self, *, symmetric: bool, percentage: float = 99.99) -> None:
        self.symmetric = symmetric
        self.lo = math.inf
        self.hi = -math.inf

    def update(self, x: np.ndarray) -> None:
        lo, hi, _ = finite_minmax(x)
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def range(self) -> tuple[float, float]:
        return finish_range(self.lo, self.hi, self.symmetric)
