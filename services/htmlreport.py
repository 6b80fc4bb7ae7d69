"""One self-contained HTML file: inline style, plots embedded as data URIs, no script and no
external reference, so the file opens offline, mails as an attachment and archives as is."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Section", "Table", "page"]

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#1b1f24;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
.meta{color:#57606a}table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}th{background:#f6f8fa}
td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #d0d7de;margin:.6em 0}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;border-radius:4px}.ok{color:#1a7f37}.bad{color:#cf222e}
"""


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    left: Sequence[str] = ()  # columns aligned left (text)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, escaped
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (alt text, PNG bytes)
    code: list[str] = field(default_factory=list)


def _table(t: Table) -> str:
    def cls(col: str) -> str:
        return ' class="l"' if col in t.left else ""

    head = "".join(f"<th{cls(c)}>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td{cls(c)}>{html.escape(str(v))}</td>" for c, v in zip(t.columns, row))
                   + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(s: Section) -> str:
    parts = [f"<section><h2>{html.escape(s.title)}</h2>"]
    parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
    parts += [_table(t) for t in s.tables]
    parts += [f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
              for alt, png in s.images]
    parts += [f"<pre><code>{html.escape(c)}</code></pre>" for c in s.code]
    return "".join(parts) + "</section>"


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="meta">{html.escape(subtitle)}</p>' + "".join(_section(s) for s in sections)
            + "</body></html>\n")
