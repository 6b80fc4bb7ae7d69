"""The streaming histogram shared by ENTROPY, PERCENTILE, MSE and SQNR.

:class:`StreamingHistogram` keeps a fixed number of counters (:data:`SLOTS`, 4096 int64 =
32 KiB per tensor) however many values it sees. Its bins sit on a global grid anchored at
zero: bin ``k`` is ``[k·w, (k+1)·w)`` with ``w = 2**e``. When a new sample falls outside the
window the grid coarsens — ``w`` doubles as often as needed, every old bin ``k`` merging
exactly into ``k >> d`` — and the window slides to the new minimum. This is the
grow-and-re-bin scheme of onnxruntime's HistogramCalibrater and PyTorch's HistogramObserver,
except that power-of-two widths make the re-binning exact (no interpolation), so:

* ``w`` is always the smallest power of two for which ``[min(0, lo), max(0, hi)]`` of all the
  data seen fits the window; that span therefore covers about ``SLOTS/2`` (2048) to ``SLOTS``
  bins — as fine as TensorRT's 2048-bin entropy histogram, or finer;
* the state after ten updates is identical to the state after one update with the
  concatenated data (streaming == one-shot): every value ends in bin ``floor(x / w)`` of the
  final ``w`` whichever way it got there;
* zero is always a bin edge, so the negative and positive sides never share a bin.

An update costs two reductions (min/max), one scale, one floor/cast and one ``np.bincount``
per 256K-value block — no ``np.histogram`` (several times slower), no Python loop over values.

ASYM observers histogram ``x``; SYM observers histogram ``|x|`` (bins ``[0, w)``, ``[w, 2w)``, ...).
"""

from __future__ import annotations

import math

import numpy as np

from npusim.compiler_svc.calibrate.base import finish_range, finite_minmax

__all__ = ["SLOTS", "StreamingHistogram", "HistogramObserver"]

SLOTS = 4096
"""Counters per histogram; the data always spans between SLOTS/2 and SLOTS bins."""

_E_MIN = -120  # w >= 2**-120 (1/w stays a normal float32); spans below ~1e-33 are not resolved
_E_MAX = 127
_BLOCK = 1 << 18


class StreamingHistogram:
    """Counts of ``x`` (or ``|x|`` if ``absolute``) on a power-of-two grid, plus exact min/max."""

    __slots__ = ("absolute", "slots", "counts", "exp", "start", "min", "max", "total")

    def __init__(self, *, absolute: bool, slots: int = SLOTS) -> None:
        if slots < 4 or slots % 2:
            raise ValueError("slots must be an even number >= 4")
        self.absolute = absolute
        self.slots = slots
        self.counts = np.zeros(slots, dtype=np.int64)
        self.exp: int | None = None  # bin width 2**exp; None before the first finite value
        self.start = 0               # global index of counts[0]; <= 0 (the window contains zero)
        self.min = math.inf          # of the raw (signed) finite values
        self.max = -math.inf
        self.total = 0

    # -- geometry ---------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp) if self.exp is not None else 0.0

    def extent(self) -> tuple[float, float]:
        """``(L, H)``: what the window must cover — the data and zero (``|x|`` for absolute)."""
        if self.total == 0:
            return 0.0, 0.0
        if self.absolute:
            return 0.0, max(-self.min, self.max)
        return min(self.min, 0.0), max(self.max, 0.0)

    def _fits(self, e: int, lo: float, hi: float) -> bool:
        return math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) + 1 <= self.slots

    def _smallest_exp(self, lo: float, hi: float) -> int:
        span = hi - lo
        if span <= 0.0:
            return _E_MIN
        e = min(_E_MAX, max(_E_MIN, math.ceil(math.log2(span / (self.slots - 1)))))
        while e < _E_MAX and not self._fits(e, lo, hi):
            e += 1
        while e > _E_MIN and self._fits(e - 1, lo, hi):
            e -= 1
        return e

    def _regrid(self, lo: float, hi: float) -> None:
        """Make the window cover ``[lo, hi]``: coarsen by powers of two, slide to the new minimum."""
        e = self._smallest_exp(lo, hi)
        if self.exp is not None:
            e = max(e, self.exp)  # never finer than before (it cannot be: the span only grows)
        start = 0 if self.absolute else math.floor(math.ldexp(lo, -e))
        if self.exp is None:
            self.exp, self.start = e, start
            return
        if e == self.exp and start == self.start:
            return
        nz = np.flatnonzero(self.counts)
        moved = self.counts[nz]
        shift = min(e - self.exp, 62)
        glob = (np.int64(self.start) + nz.astype(np.int64)) >> np.int64(shift)  # arithmetic: floor
        counts = np.zeros(self.slots, dtype=np.int64)
        np.add.at(counts, glob - start, moved)
        self.counts, self.exp, self.start = counts, e, start

    # -- streaming --------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        lo, hi, x = finite_minmax(x)
        if x.size == 0:
            return
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.total += int(x.size)
        self._regrid(*self.extent())
        assert self.exp is not None
        scale = np.float32(math.ldexp(1.0, -self.exp))  # exact: a power of two
        offset = np.float32(self.start)
        n = min(x.size, _BLOCK)
        buf = np.empty(n, dtype=np.float32)
        idx = np.empty(n, dtype=np.intp)
        for i in range(0, x.size, _BLOCK):  # blocks keep the temporaries in cache
            xb = x[i:i + _BLOCK]
            b, k = buf[: xb.size], idx[: xb.size]
            np.multiply(xb, scale, out=b)
            if self.absolute:
                np.absolute(b, out=k, casting="unsafe")  # truncation == floor for |x|
            else:
                np.floor(b, out=b)
                np.subtract(b, offset, out=k, casting="unsafe")  # small exact integers
            c = np.bincount(k, minlength=self.slots)
            if c.size > self.slots:  # cannot happen by construction; never corrupt the state
                c[self.slots - 1] += c[self.slots:].sum()
                c = c[: self.slots]
            self.counts += c

    # -- views for the range computations --------------------------------------------------
    def sides(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(neg, pos, w)``: counts below zero (nearest zero first) and from zero up, as float64,
        trimmed after the last non-empty bin. Bin ``j`` of a side covers magnitudes ``[j·w, (j+1)·w)``."""
        z = -self.start
        pos = self.counts[z:]
        neg = self.counts[:z][::-1]
        return _trim(neg), _trim(pos), self.width

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the values, interpolated linearly inside a bin and
        clamped to the exact data bounds (``[0, max|x|]`` for an absolute histogram)."""
        lo, hi = self.extent() if self.absolute else (self.min, self.max)
        if self.total == 0:
            return 0.0
        c = np.cumsum(self.counts)
        t = min(max(q, 0.0), 1.0) * self.total
        j = min(int(np.searchsorted(c, t, side="left")), self.slots - 1)
        before = float(c[j - 1]) if j else 0.0
        frac = (t - before) / float(self.counts[j]) if self.counts[j] else 1.0
        v = (self.start + j + frac) * self.width
        return min(max(v, lo), hi)


def _trim(c: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(c)
    return c[: nz[-1] + 1].astype(np.float64) if nz.size else np.zeros(0)


class HistogramObserver:
    """Base of the histogram methods: a :class:`StreamingHistogram` of ``x`` (ASYM) or ``|x|`` (SYM).

    Subclasses implement ``_range()`` on ``self.hist`` (only called once data was seen); the
    result goes through :func:`~compiler_svc.calibrate.base.finish_range`.
    """

    __slots__ = ("symmetric", "percentage", "hist")

    def __init__(self, *, symmetric: bool, percentage: float = 99.99, slots: int = SLOTS) -> None:
        self.symmetric = symmetric
        self.percentage = percentage
        self.hist = StreamingHistogram(absolute=symmetric, slots=slots)

    def update(self, x: np.ndarray) -> None:
        self.hist.update(x)

    def range(self) -> tuple[float, float]:
        if self.hist.total == 0:
            return finish_range(math.inf, -math.inf, self.symmetric)
        lo, hi = self._range()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # a search that found nothing: keep all
            lo, hi = self.hist.min, self.hist.max
            if self.symmetric:
                lo, hi = -max(-lo, hi), max(-lo, hi)
        return finish_range(lo, hi, self.symmetric)

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError
