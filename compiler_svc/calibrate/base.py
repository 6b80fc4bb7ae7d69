"""What every observer shares: the observer protocol, finite min/max, and the final range rules.

An observer sees one tensor's values sample after sample (``update(x)``) and keeps only a
fixed-size summary of them; ``range()`` turns the summary into the ``(lo, hi)`` the quantiser
uses. Whatever the method, a range

* contains zero (``lo <= 0 <= hi``), so zero is exactly representable after quantisation;
* is finite, also as float32: NaN and ±inf in the data are ignored, ends are clamped to ±3.4e38;
* is at least :data:`MIN_WIDTH` wide, so all-zero, empty or vanishingly small tensors still get a
  valid (tiny) range and a non-zero scale;
* is ``(-t, t)`` for the ``_SYM`` variants.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

__all__ = ["Observer", "MIN_WIDTH", "finite_minmax", "finish_range"]

MIN_WIDTH = 1e-8
"""Narrowest range returned: far below any real activation scale, far above float32's ``tiny``."""

_F32_MAX = float(np.finfo(np.float32).max)


class Observer(Protocol):
    """A streaming summary of one tensor: constant memory, however many updates."""

    symmetric: bool

    def update(self, x: np.ndarray) -> None: ...

    def range(self) -> tuple[float, float]: ...


def finite_minmax(x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(min, max, x)`` of the finite values of ``x`` (raveled); ``(inf, -inf, empty)`` if none.

    The common case (no NaN/inf) costs two vectorised reductions and no copy.
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return math.inf, -math.inf, x
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        x = x[np.isfinite(x)]
        if x.size == 0:
            return math.inf, -math.inf, x
        lo, hi = float(x.min()), float(x.max())
    return lo, hi, x


def finish_range(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    """Apply the rules above to a raw ``(lo, hi)`` (which may be ``(inf, -inf)`` for no data)."""
    lo = float(lo) if math.isfinite(lo) else 0.0
    hi = float(hi) if math.isfinite(hi) else 0.0
    lo, hi = max(min(lo, 0.0), -_F32_MAX), min(max(hi, 0.0), _F32_MAX)
    if symmetric:
        t = max(-lo, hi, MIN_WIDTH / 2)
        return -t, t
    if hi - lo < MIN_WIDTH:
        if hi > 0.0 or lo == 0.0:
            hi = lo + MIN_WIDTH
        else:
            lo = hi - MIN_WIDTH
    return lo, hi
