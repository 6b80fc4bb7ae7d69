"""Plots for ``plan`` and ``advise``, as PNG bytes (matplotlib's Agg backend: no display needed).

A sweep is read one knob at a time: for each knob that takes more than one value, throughput
and latency against it, one line per combination of the other knobs, so the effect of that
knob alone is what the eye follows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["KNOBS", "swept_knobs", "sweep_png", "bars_png"]

KNOBS = {"workers": "worker_num", "batch": "batch size", "in_flight": "requests in flight",
         "rate_per_s": "offered rate (requests/s)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return buf.getvalue()


def swept_knobs(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The knobs that take more than one value in these configurations, in ``KNOBS`` order."""
    return [k for k in KNOBS if len({c.get(k) for c in configs if k in c}) > 1]


def _label(c: dict[str, Any], others: list[str]) -> str:
    return ", ".join(f"{KNOBS[k].split(' (')[0]} {c[k]:g}" for k in others if k in c) or "all"


def sweep_png(configs: Sequence[dict[str, Any]], title: str) -> bytes:
    """Throughput and p50/p99 latency against each swept knob (one row per knob); with nothing
    swept, the one configuration's latency percentiles."""
    plt = _pyplot()
    knobs = swept_knobs(configs) or [next(k for k in KNOBS if k in configs[0])]
    fig, axes = plt.subplots(len(knobs), 2, figsize=(10, 3.6 * len(knobs)), squeeze=False)
    for row, knob in zip(axes, knobs):
        others = [k for k in KNOBS if k != knob and any(k in c for c in configs)]
        groups: dict[str, list[dict[str, Any]]] = {}
        for c in configs:
            groups.setdefault(_label(c, others), []).append(c)
        for label, cs in groups.items():
            cs = sorted(cs, key=lambda c: c[knob])
            xs = [c[knob] for c in cs]
            row[0].plot(xs, [c["throughput_per_s"] for c in cs], "o-", label=label)
            line = row[1].plot(xs, [c["latency_us"]["p50"] / 1e3 for c in cs], "o-", label=f"{label}: p50")[0]
            row[1].plot(xs, [c["latency_us"]["p99"] / 1e3 for c in cs], "s--", color=line.get_color(),
                        label=f"{label}: p99")
        row[0].set_ylabel("samples / s")
        row[1].set_ylabel("latency (ms)")
        for ax in row:
            ax.set_xlabel(KNOBS[knob])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if knob in ("workers", "batch", "in_flight") and max(c[knob] for c in configs) >= 8:
                ax.set_xscale("log", base=2)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def bars_png(labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str) -> bytes:
    """Grouped bars: one group per label, one bar per series (e.g. before / after a change)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(labels) + 2), 3.4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
