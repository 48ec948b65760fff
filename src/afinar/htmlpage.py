"""Self-contained HTML reports (`inspect`, `eval`): one page skeleton and one table helper."""
from __future__ import annotations

import html


def table(header: list[str], rows: list[list], escape: bool = True, empty: str | None = None) -> str:
    """An HTML table; cells are escaped unless they are HTML already (`escape=False`). `empty`: shown without rows."""
    if not rows and empty is not None:
        return empty
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cell = (lambda c: html.escape(str(c))) if escape else str
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, css: str, parts: list[str]) -> str:
    head = ["<!doctype html><html lang=es><meta charset=utf-8>", f"<title>{html.escape(title)}</title>", f"<style>{css}</style>"]
    return "\n".join(head + parts) + "</html>"
