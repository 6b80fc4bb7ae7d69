"""ENTROPY: the clipping range whose int8 quantisation loses the least information (KL divergence).

``ENTROPY_SYM`` is TensorRT's calibration (Migacz, "8-bit inference with TensorRT", 2017) on
the histogram of ``|x|``: for every threshold ``i`` (in bins, from 128 up to the last non-empty
bin) the reference distribution ``P`` is the first ``i`` bins with all the mass beyond folded
into bin ``i - 1``; the candidate ``Q`` merges those ``i`` bins into 128 quantisation levels
(group ``k`` = bins ``[k·i // 128, (k+1)·i // 128)``) and spreads each level's count evenly over
its non-empty bins. The threshold minimising ``KL(P || Q)`` wins. Thresholds are tried every
bin when there are at most 256 of them, else 128 spread evenly and then every bin around the best.

``ENTROPY_ASYM`` applies the *same* criterion to the real asymmetric quantiser instead of
searching each side on its own: 256 levels of one step ``s`` (in bins) over ``[lo, hi]``, with
zero on a level boundary, ``n`` levels below zero and ``256 - n`` above. ``P`` folds each
side's clipped tail into that side's outermost bin; ``Q`` merges each side's bins into its
levels as above. Because the two sides' bins are disjoint, ``KL`` splits into per-side sums
plus one shared normaliser, and every per-side sum is a prefix sum over levels, so for every
step ``s`` all 257 splits cost O(1) each. The search is a joint one over ``(s, n)`` — every
split for 64 steps from 1 bin per level up to no clipping, then 33 finer steps around the
best — not a pair of independent 1-D searches. An all-positive
(ReLU) tensor thus gets all 256 levels on ``[0, hi]`` — twice the resolution a per-side
128-level search would assume — and a skewed one gets levels in proportion to where its mass is.

Both variants evaluate ``KL`` in closed form from prefix sums of ``h``, ``h·log h`` and the
non-empty-bin count (O(levels) per candidate instead of O(bins)), vectorised over candidates.
As in pytorch-quantization, the bin holding zero is capped at its neighbour's count first:
exact zeros (ReLU) are representable by every candidate and must not drive the threshold.
"""

from __future__ import annotations

import numpy as np

from npusim.compiler_svc.calibrate.histogram import HistogramObserver

SYM_LEVELS = 128
ASYM_LEVELS = 256
_TINY = 1e-300
_COARSE = 128  # candidates of the coarse pass; a fine pass then tries every bin/step near the best


def _cap_zero_bin(h: np.ndarray) -> np.ndarray:
    h = h.copy()
    if h.size >= 2:
        h[0] = min(h[0], h[1])
    return h


def _xlogx(v: np.ndarray) -> np.ndarray:
    return v * np.log(np.maximum(v, _TINY))  # 0·log 0 = 0


def _side_table(h: np.ndarray, edges: np.ndarray, *, all_levels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """KL pieces of one side of the histogram for every candidate grid and level count.

    ``h``: counts of the side, bin 0 next to zero, padded so that ``edges[:, -1] <= len(h)``.
    ``edges``: ``(rows, K+1)`` int bin edges of the levels, ``edges[:, 0] == 0``, strictly increasing.

    Returns ``(A, TQ)``, both ``(rows, K+1)``; column ``n`` is the side clipped after ``n``
    levels (threshold ``edges[:, n]``): ``A = Σ P·log P − Σ P·log Q`` (unnormalised counts;
    ``+inf`` where ``Q`` misses mass of ``P``) and ``TQ`` = the side's mass inside the range.
    Column 0 is allowed only for an empty side. With ``all_levels=False`` only column ``K``
    is computed and both results are ``(rows,)``.
    """
    total = float(h.sum())
    hc = np.concatenate(([0.0], np.cumsum(h)))
    nzc = np.concatenate(([0.0], np.cumsum(h > 0)))
    hl = np.concatenate(([0.0], np.cumsum(_xlogx(h))))
    hce = hc[edges]                                   # mass below each edge (rows, K+1)
    g = np.diff(hce, axis=1)                          # level masses          (rows, K)
    nz = np.maximum(np.diff(nzc[edges], axis=1), 1.0)  # non-empty bins each  (rows, K)
    lg = np.log(np.maximum(g, _TINY))
    c = g * (lg - np.log(nz))                         # Σ P·log Q over a level (not the last)
    if all_levels:
        t = edges[:, 1:]                              # threshold after n = 1..K levels
        cc = np.cumsum(c, axis=1) - c                 # Σ over the levels before the last one
        inside = hce[:, 1:]
    else:
        t = edges[:, -1]
        cc = c[:, :-1].sum(axis=1)
        g, nz, lg, inside = g[:, -1], nz[:, -1], lg[:, -1], hce[:, -1]
    out = np.maximum(total - inside, 0.0)             # clipped mass, folded into the last bin
    last = h[t - 1]
    missing = out > 0
    nz_last = nz + (missing & (last == 0))
    a = hl[t - 1] + _xlogx(last + out) - cc - (g + out) * (lg - np.log(nz_last))
    a[missing & (g == 0)] = np.inf                    # Q is 0 where P has the folded tail
    if not all_levels:
        return (a if total else np.full_like(a, np.inf)), inside
    first = np.full((len(edges), 1), 0.0 if total == 0 else np.inf)
    a = np.concatenate((first, a), axis=1)
    if total == 0:
        a[:, 1:] = np.inf  # no levels for a side without data
    return a, hce


def _kl(a: np.ndarray, tq: np.ndarray, total: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = a / total - np.log(total) + np.log(tq)
    return np.where(np.isfinite(kl) & (tq > 0), kl, np.inf)


def sym_threshold(h: np.ndarray, levels: int = SYM_LEVELS) -> int:
    """TensorRT's threshold, in bins, for the ``|x|`` histogram ``h`` (trimmed)."""
    m = len(h)
    if m <= levels:
        return m
    h = _cap_zero_bin(h)
    total = float(h.sum())
    k = np.arange(levels + 1)

    def best(cands: np.ndarray) -> tuple[int, float]:
        edges = (k[None, :] * cands[:, None]) // levels
        a, tq = _side_table(h, edges, all_levels=False)
        kl = _kl(a, tq, total)
        j = int(np.argmin(kl))
        return int(cands[j]), float(kl[j])

    cands = np.arange(levels, m + 1)
    if cands.size <= 2 * _COARSE:
        i, kl = best(cands)
    else:  # coarse pass, then every bin around the best
        coarse = np.unique(np.linspace(levels, m, _COARSE).round().astype(np.int64))
        i, kl = best(coarse)
        step = int(np.ceil((m - levels) / (_COARSE - 1)))
        i2, kl2 = best(np.arange(max(levels, i - step), min(m, i + step) + 1))
        if kl2 <= kl:
            i, kl = i2, kl2
    return i if np.isfinite(kl) else m


def asym_thresholds(neg: np.ndarray, pos: np.ndarray,
                    levels: int = ASYM_LEVELS) -> tuple[int, int]:
    """``(neg_bins, pos_bins)``: the range ``[-neg_bins·w, pos_bins·w]`` minimising KL for
    ``levels`` uniform levels split across zero (see the module docstring)."""
    mn, mp = len(neg), len(pos)
    if mn + mp <= levels:
        return mn, mp
    pos = _cap_zero_bin(pos)
    total = float(neg.sum() + pos.sum())
    s_max = max(1.0, (mn + mp) / (levels - 2))  # at s_max some split clips nothing
    rows = int(min(_COARSE // 2, max(2, np.ceil((s_max - 1.0) * 64) + 1)))
    k = np.arange(levels + 1)

    def best(steps: np.ndarray) -> tuple[int, int, float, float]:
        edges = np.floor(k[None, :] * steps[:, None]).astype(np.int64)
        size = max(int(edges[:, -1].max()), mn, mp)
        hn = np.zeros(size)
        hn[:mn] = neg
        hp = np.zeros(size)
        hp[:mp] = pos
        an, tqn = _side_table(hn, edges)
        ap, tqp = _side_table(hp, edges)
        # split: n levels below zero, levels - n above
        kl = _kl(an + ap[:, ::-1], tqn + tqp[:, ::-1], total)
        r, n = np.unravel_index(int(np.argmin(kl)), kl.shape)
        return int(edges[r, n]), int(edges[r, levels - n]), float(kl[r, n]), float(steps[r])

    steps = np.linspace(1.0, s_max, rows)
    lo, hi, kl, s = best(steps)
    if rows > 2:  # refine the step around the best coarse one
        ds = steps[1] - steps[0]
        lo2, hi2, kl2, _ = best(np.linspace(max(1.0, s - ds), min(s_max, s + ds), 33))
        if kl2 < kl:
            lo, hi, kl = lo2, hi2, kl2
    if not np.isfinite(kl):
        return mn, mp
    return lo, hi


class EntropyObserver(HistogramObserver):
    __slots__ = ()

    def _range(self) -> tuple[float, float]:
        neg, pos, w = self.hist.sides()
        if self.symmetric:
            t = min(sym_threshold(pos) * w, max(-self.hist.min, self.hist.max))
            return -t, t
        n, p = asym_thresholds(neg, pos)
        return max(-n * w, self.hist.min), min(p * w, self.hist.max)
