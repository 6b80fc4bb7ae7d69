"""PERCENTILE: drop the ``100 - p`` percent most extreme values (``p`` = ``percentage``, 99.99).

* ``PERCENTILE_ASYM`` → ``[quantile((100 - p)/100), quantile(p/100)]`` of ``x``: each tail loses
  ``(100 - p)`` percent;
* ``PERCENTILE_SYM`` → ``±quantile(p/100)`` of ``|x|``: the two tails together lose ``(100 - p)``
  percent (on N(0, 1), p = 99 gives ±2.576).

Quantiles come from the streaming histogram (at least 2048 bins over the data's span),
interpolated linearly inside a bin and clamped to the exact min/max, so ``p = 100`` is MIN_MAX.
"""

from __future__ import annotations

from npusim.compiler_svc.calibrate.histogram import HistogramObserver


class PercentileObserver(HistogramObserver):
    __slots__ = ()

    def _range(self) -> tuple[float, float]:
        p = self.percentage / 100.0
        if self.symmetric:
            t = self.hist.quantile(p)
            return -t, t
        return self.hist.quantile(1.0 - p), self.hist.quantile(p)
