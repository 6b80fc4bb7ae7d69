"""MSE: the clipping range with the least expected squared int8 quantisation error.

``noise(range) = rounding noise inside + clipping noise outside``, integrated exactly over the
streaming histogram (values uniform within a bin; see :mod:`npusim.compiler_svc.calibrate.noise`),
minimised over a coarse-then-fine geometric grid of steps ``Δ``:

* ``MSE_ASYM``: 256 levels over ``[lo, hi] = [-zΔ, (255 - z)Δ]`` — every integer zero point
  ``z`` is tried for every ``Δ``, so zero is exactly representable and the range may be skewed;
* ``MSE_SYM``: levels ``kΔ``, ``|k| <= 127``, over ``[-t, t]``, ``t = 127Δ`` (on ``|x|``).
"""

from __future__ import annotations

from npusim.compiler_svc.calibrate.histogram import HistogramObserver
from npusim.compiler_svc.calibrate.noise import search


class MSEObserver(HistogramObserver):
    __slots__ = ()
    gamma = 1.0  # weight of clipping noise against rounding noise

    def _range(self) -> tuple[float, float]:
        return search(self.hist, symmetric=self.symmetric, gamma=self.gamma)
