"""``advise``'s answer for people: a ranked table in the terminal, or one self-contained HTML page
with each change's before/after plot and its code."""

from __future__ import annotations

from typing import Any

from npusim.services.htmlreport import Section, Table, page
from npusim.services.plots import bars_png

__all__ = ["print_report", "advise_page"]


def _acc(a: dict[str, Any]) -> str:
    b, x = a.get("before"), a.get("after")
    if b and x:
        return f"{b['value']:g} → {x['value']:g} ({b['metric']})"
    return a.get("note", "")


def _host(m: dict[str, Any]) -> str:
    if "host_us_before" not in m:
        return "-"
    return f"{m['host_us_before']:,.0f} → {m['host_us_after']:,.0f}"


def _header(r: dict[str, Any]) -> str:
    b = r["baseline"]
    return (f"{r['model']} on {r['devices']}, worker_num={r['workers']}, target {r['target']}: today "
            f"{b['latency_us']:,.0f} µs single-stream, {b['throughput_per_s']:,.0f} samples/s offline "
            f"(chip-scale, virtual time; host operators timed on this machine)")


def print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 160)
    out.print(f"[bold]{_header(r)}[/bold]")
    t = RichTable(title=f"recommendations, best first for {r['target']}")
    for col in ("#", "change", "latency µs", "samples/s", "gain", "host ops µs/request", "accuracy"):
        t.add_column(col, justify="left" if col in ("change", "accuracy") else "right")
    for i, rec in enumerate(r["recommendations"], 1):
        p = rec["predicted"]
        t.add_row(str(i), rec["change"], f"{p['before']['latency_us']:,.0f} → {p['latency_us']:,.0f}",
                  f"{p['before']['throughput_per_s']:,.0f} → {p['throughput_per_s']:,.0f}", f"{p['gain_pct']:+.1f}%",
                  _host(rec["measured"]), _acc(rec["accuracy"]))
    out.print(t)
    if r["recommendations"]:
        top = r["recommendations"][0]
        out.print(f"[bold]first:[/bold] {top['change']} — {top['why']}")
        out.print(top["code"], markup=False, highlight=False)
        if top["cli"]:
            out.print(top["cli"], markup=False, highlight=False)
    else:
        out.print("nothing to change: every check found the model already set up for this target")
    for s in r["checked"]:
        out.print(f"[dim]{s['knob']}: {s['reason']}[/dim]")


def advise_page(r: dict[str, Any]) -> str:
    rows = []
    for i, rec in enumerate(r["recommendations"], 1):
        p = rec["predicted"]
        rows.append((i, rec["change"], f"{p['before']['latency_us']:,.0f} → {p['latency_us']:,.0f}",
                     f"{p['before']['throughput_per_s']:,.0f} → {p['throughput_per_s']:,.0f}",
                     f"{p['gain_pct']:+.1f}%", _host(rec["measured"]), _acc(rec["accuracy"])))
    sections = [Section("Ranked changes", [], [Table(
        ["#", "change", "latency µs", "samples/s", "gain", "host ops µs/request", "accuracy"], rows,
        left=("change", "accuracy"))])]
    for i, rec in enumerate(r["recommendations"], 1):
        p = rec["predicted"]
        sec = Section(f"{i}. {rec['change']}", [rec["why"]])
        sec.images.append((f"{rec['knob']}: before and after", bars_png(
            {"single-stream latency (µs)": [p["before"]["latency_us"], p["latency_us"]],
             "throughput (samples/s)": [p["before"]["throughput_per_s"], p["throughput_per_s"]]},
            ["today", "after"], rec["change"])))
        m = rec["measured"]
        if "host_ops_us" in m:
            ops = sorted(set(m["host_ops_us"]["before"]) | set(m["host_ops_us"]["after"]))
            sec.tables.append(Table(["host operator", "today µs", "after µs"], [
                (op, f"{m['host_ops_us']['before'].get(op, 0):,.1f}", f"{m['host_ops_us']['after'].get(op, 0):,.1f}")
                for op in ops], left=("host operator",)))
        sec.paragraphs.append(f"accuracy: {_acc(rec['accuracy'])}")
        sec.code.append(rec["code"] + (f"\n{rec['cli']}" if rec["cli"] else ""))
        sections.append(sec)
    sections.append(Section("Checked, nothing to change", [f"{s['knob']}: {s['reason']}" for s in r["checked"]]))
    return page(f"npusim advise: {r['model']}", _header(r), sections)
