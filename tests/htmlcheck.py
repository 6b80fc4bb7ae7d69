"""Structural checks of a self-contained HTML report: it parses, every image is an embedded PNG
that decodes, and nothing points outside the file (no script, no link, no URL)."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Parsed(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[bytes] = []
        self.tables: list[list[list[str]]] = []
        self.tags: set[str] = set()
        self.external: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith("data:"):
                self.external.append(v)
        if tag == "img":
            src = a.get("src") or ""
            head, _, b64 = src.partition(",")
            assert head == "data:image/png;base64", head
            self.images.append(base64.b64decode(b64, validate=True))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None


def check_report(text: str) -> Parsed:
    """The page, parsed; AssertionError on anything that would not open offline."""
    assert text.startswith("<!DOCTYPE html>")
    p = Parsed(text)
    assert "script" not in p.tags and "link" not in p.tags
    assert not p.external, p.external
    assert "http://" not in text and "https://" not in text
    assert p.images and all(img.startswith(PNG_MAGIC) and len(img) > 1000 for img in p.images)
    return p
