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
    from matplotlib.ticker import NullLocator

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
            if knob in ("workers", "batch", "in_flight"):
                values = sorted({c[knob] for c in configs})
                if values[-1] >= 8:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(values, [str(v) for v in values])
                ax.xaxis.set_minor_locator(NullLocator())
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def bars_png(metrics: dict[str, Sequence[float]], names: Sequence[str], title: str) -> bytes:
    """One small panel per metric (each on its own axis: they have different units), one bar per
    name in each, e.g. ``{"latency (µs)": [before, after]}`` with ``names = ["today", "after"]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False)
    colours = [f"C{i}" for i in range(len(names))]
    for ax, (metric, values) in zip(axes[0], metrics.items()):
        bars = ax.bar(range(len(values)), values, color=colours)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(0, max(values) * 1.18 if max(values) > 0 else 1)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
