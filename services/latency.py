"""Latency percentiles under the names every report uses (``bench``, ``plan``): µs, p50…p99.9."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PERCENTILES", "latency_stats"]

PERCENTILES = (50, 90, 95, 99, 99.9)


def latency_stats(values_ns: Sequence[float] | np.ndarray) -> dict[str, float]:
    """min, mean, max and each percentile of ``values_ns``, in µs (``p99.9_us`` …)."""
    v = np.asarray(values_ns, dtype=np.float64) / 1e3
    out = {"min_us": float(v.min()), "mean_us": float(v.mean()), "max_us": float(v.max())}
    for p, q in zip(PERCENTILES, np.percentile(v, PERCENTILES)):
        out[f"p{p:g}_us"] = float(q)
    return out
