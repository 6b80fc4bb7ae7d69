"""The int8 quantisation-noise model shared by MSE and SQNR.

For a histogram bin the values are taken as uniform inside the bin, so every expectation is
an exact integral:

* *rounding noise* — inside the range a value ``x`` becomes the nearest multiple of the step
  ``Δ``; ``∫₀ˣ (u − Δ·round(u/Δ))² du`` has the closed form ``G(x) = k·Δ³/12 + r³/3``
  (``k = round(x/Δ)``, ``r = x − kΔ``), so a bin's noise is ``G(b) − G(a)``. That holds for
  bins wider than ``Δ`` and for bins much narrower: ReLU's exact zeros, in the bin ``[0, w)``,
  cost ``w²/3`` each instead of the ``Δ²/12`` a textbook model would charge them;
* *clipping noise* — beyond the range a value becomes the end point ``c``: ``∫ (x − c)² dx``.

The quantisers (zero is always exactly representable):

* ASYM: 256 levels ``kΔ``, ``k = -z .. 255 - z`` — range ``[-zΔ, (255 - z)Δ]`` (this is what
  onnxruntime derives from such a range: scale ``Δ``, integer zero point);
* SYM: 255 levels ``kΔ``, ``|k| <= 127`` — range ``[-t, t]`` with ``t = 127Δ``.

Zero is a bin edge of the histogram, so each side (magnitudes below zero, values above) is
handled alone: for one step ``Δ`` the noise of a side for *every* clip level ``n`` (range end
``nΔ``) comes from prefix sums over bins, and ASYM tries all 256 zero points at once (a side
without data gets no levels: ``z = 0`` for all-positive data).
The search runs over a geometric grid of steps — 48 spanning ranges from "clips nothing" down
to 256× narrower, on the histogram merged to ≤ 512 bins a side, then 24 within ±12 % of the
best on the full histogram — minimising ``rounding + γ·clipping`` (``γ = 1`` is MSE; SQNR
uses ``γ = 3``).
"""

from __future__ import annotations

import numpy as np

from npusim.compiler_svc.calibrate.histogram import StreamingHistogram

__all__ = ["side_noise", "search"]

ASYM_STEPS = 255
SYM_LEVELS = 127
_COARSE = 48
_FINE = 24
_SPAN = 256.0  # the coarse grid goes from "no clipping" down to a range 256x narrower
_COARSE_BINS = 512  # the coarse pass sees the histogram merged to at most this many bins a side


def _antiderivative(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``∫₀ˣ (u − d·round(u/d))² du = k·d³/12 + r³/3`` with ``k = round(x/d)``, ``r = x − k·d``."""
    k = np.floor(x / d + 0.5)
    r = x - k * d
    return k * (d * d * d / 12.0) + r * r * r / 3.0


def side_noise(h: np.ndarray, w: float, deltas: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rounding and clipping noise (sums over the values) of one side of a histogram.

    ``h[j]`` counts magnitudes in ``[j·w, (j+1)·w)``. Returns two ``(len(deltas), len(levels))``
    arrays for the range end ``levels[n]·deltas[r]``.
    """
    rows, cols = len(deltas), len(levels)
    if len(h) == 0:
        z = np.zeros((rows, cols))
        return z, z.copy()
    d = deltas[:, None]
    c = d * levels[None, :].astype(np.float64)                  # range end (rows, cols)
    j = np.minimum(np.floor(c / w), len(h)).astype(np.intp)     # bin holding c (len(h): beyond data)
    m = min(len(h), int(j.max()) + 1)                           # bins past every c only clip
    edges = np.arange(m + 1) * w
    gx = _antiderivative(edges[None, :], d)                      # (rows, m+1)
    dens = h / w
    pr = np.zeros((rows, m + 1))
    np.cumsum(dens[None, :m] * np.diff(gx, axis=1), axis=1, out=pr[:, 1:])
    # clipped bins: Σ h·E[(x − c)²] = S2 − 2c·S1 + c²·S0 over the bins above c (uniform in a bin)
    mid = (np.arange(len(h)) + 0.5) * w
    s0 = np.concatenate((np.cumsum(h[::-1])[::-1], [0.0]))
    s1 = np.concatenate((np.cumsum((h * mid)[::-1])[::-1], [0.0]))
    s2 = np.concatenate((np.cumsum((h * (mid * mid + w * w / 12.0))[::-1])[::-1], [0.0]))

    inside = j < len(h)
    jj = np.minimum(j, len(h) - 1)
    hj = np.where(inside, dens[jj], 0.0)
    lo_edge = j * w
    # a range end is a level: G(nΔ) = n·Δ³/12 exactly
    g_c = levels[None, :] * (d * d * d / 12.0)
    rounding = np.take_along_axis(pr, j, axis=1) + hj * (g_c - np.take_along_axis(gx, j, axis=1))
    up = np.minimum(j + 1, len(h))
    above = s2[up] - 2.0 * c * s1[up] + c * c * s0[up]
    clipping = np.maximum(above, 0.0) + hj * ((lo_edge + w - c) ** 3) / 3.0
    return np.maximum(rounding, 0.0), clipping


def _coarsen(neg: np.ndarray, pos: np.ndarray, w: float, bins: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Merge groups of ``2**k`` bins (exactly) until neither side has more than ``bins``."""
    f = 1
    while max(len(neg), len(pos)) > bins * f:
        f *= 2
    if f == 1:
        return neg, pos, w

    def merge(h: np.ndarray) -> np.ndarray:
        return np.pad(h, (0, -len(h) % f)).reshape(-1, f).sum(axis=1)

    return merge(neg), merge(pos), w * f


def _best(sides: tuple[np.ndarray, np.ndarray, float], symmetric: bool, gamma: float,
          deltas: np.ndarray) -> tuple[float, float, float]:
    """``(lo, hi, noise)`` of the best range on this grid of steps."""
    neg, pos, w = sides
    if symmetric:
        r, c = side_noise(pos, w, deltas, np.array([SYM_LEVELS]))
        noise = (r + gamma * c)[:, 0]
        i = int(np.argmin(noise))
        t = SYM_LEVELS * float(deltas[i])
        return -t, t, float(noise[i])
    levels = np.arange(ASYM_STEPS + 1)
    rn, cn = side_noise(neg, w, deltas, levels)
    rp, cp = side_noise(pos, w, deltas, levels)
    # zero point z: z steps below zero, 255 - z above; a side without data gets no levels
    noise = rn + rp[:, ::-1] + gamma * (cn + cp[:, ::-1])
    if not len(neg):
        noise[:, 1:] = np.inf
    elif not len(pos):
        noise[:, :-1] = np.inf
    i, z = np.unravel_index(int(np.argmin(noise)), noise.shape)
    d = float(deltas[i])
    return -int(z) * d, (ASYM_STEPS - int(z)) * d, float(noise[i, z])


def search(hist: StreamingHistogram, *, symmetric: bool, gamma: float) -> tuple[float, float]:
    """The range minimising ``rounding + gamma·clipping`` noise for the histogram's data."""
    lo, hi = hist.extent()
    if symmetric:
        d_max = hi / SYM_LEVELS
    else:
        d_max = (hi - lo) / (ASYM_STEPS - 1)  # some zero point then clips nothing
    if not d_max > 0.0:
        return lo, hi
    sides = hist.sides()
    coarse = np.geomspace(d_max / _SPAN, d_max, _COARSE)
    lo_c, hi_c, _ = _best(_coarsen(*sides, _COARSE_BINS), symmetric, gamma, coarse)
    ratio = coarse[1] / coarse[0]
    d_best = (hi_c - lo_c) / (2 * SYM_LEVELS if symmetric else ASYM_STEPS)
    fine = np.geomspace(d_best / ratio, d_best * ratio, _FINE)
    lo_f, hi_f, _ = _best(sides, symmetric, gamma, np.append(fine, d_best))
    return lo_f, hi_f
