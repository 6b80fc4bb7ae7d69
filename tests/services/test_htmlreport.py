"""One self-contained HTML page: text escaped, plots embedded, nothing external."""

from __future__ import annotations

from npusim.services.htmlreport import Section, Table, page
from npusim.services.plots import bars_png, swept_knobs, sweep_png
from tests.htmlcheck import check_report


def _config(workers: int, batch: int, tput: float) -> dict:
    return {"workers": workers, "batch": batch, "in_flight": 8, "throughput_per_s": tput,
            "latency_us": {"p50": 1000.0 * batch / workers, "p90": 1100.0, "p99": 1200.0, "p999": 1300.0}}


def test_a_page_embeds_its_plots_and_escapes_its_text() -> None:
    png = bars_png({"latency (µs)": [2.0, 1.0], "throughput (/s)": [1000.0, 1500.0]}, ["today", "after"], "t")
    html = page("<title>", "sub & title", [Section("s", ["<b>not bold</b>"], [Table(["k", "v"], [("<x>", 1)])],
                                                   [("plot", png)], ["a < b"])])
    p = check_report(html)
    assert p.images == [png]
    assert p.tables == [[["k", "v"], ["<x>", "1"]]]
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>" not in html


def test_the_sweep_plot_has_one_row_per_swept_knob() -> None:
    configs = [_config(w, b, 100.0 * w * b) for w in (1, 2, 4) for b in (1, 8)]
    assert swept_knobs(configs) == ["workers", "batch"]
    assert swept_knobs(configs[:1]) == []
    two, one = sweep_png(configs, "t"), sweep_png(configs[:1], "t")
    assert two.startswith(b"\x89PNG") and one.startswith(b"\x89PNG")
    assert _height(two) > 1.8 * _height(one)


def _height(png: bytes) -> int:
    return int.from_bytes(png[20:24], "big")  # IHDR: width, then height
