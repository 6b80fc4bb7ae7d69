"""Box tables for the profiler's ``print_*`` methods (rich, drawn like the SDK's 0.10 output)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["Column", "print_summary", "print_table"]

# ┌─┬┐ / ╞═╪╡ / ┆: the SDK's box-drawing style
SDK_BOX = box.Box("┌─┬┐\n│ ┆│\n╞═╪╡\n│ ┆│\n├╌┼┤\n├╌┼┤\n│ ┆│\n└─┴┘\n")


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    numeric: bool = False


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return str(value)


def _emit(renderable: Table, file: IO[str] | None) -> None:
    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal:  # a file or a pipe: never squeeze or wrap columns
        wide = console.options.update_width(100_000)
        console.width = max(console.width, console.measure(renderable, options=wide).maximum)
    console.print(renderable)


def print_table(title: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]], *,
                file: IO[str] | None = None) -> None:
    table = Table(title=title, box=SDK_BOX, title_justify="left")
    for c in columns:
        table.add_column(c.header, justify="right" if c.numeric else "left", no_wrap=True)
    for r in rows:
        table.add_row(*(_cell(r.get(c.key)) for c in columns))
    _emit(table, file)


def print_summary(stats: dict[str, Any], percentiles: Sequence[float], *, file: IO[str] | None = None) -> None:
    table = Table(title="Inference Results Summary", box=SDK_BOX, show_header=False, title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("Inference counts", str(stats["count"]))
    for label, key in (("Min", "min"), ("Max", "max"), ("Mean", "mean"), ("Median", "median")):
        table.add_row(f"{label} latency (ns)", _ns(stats[key]))
    for q in percentiles:
        table.add_row(f"{q:.1f} percentile latency (ns)", _ns(stats[f"p{q:g}"]))
    _emit(table, file)


def _ns(value: float | None) -> str:
    return "-" if value is None else f"{round(value)}"
