"""One self-contained HTML page: a title, sections of plotly figures, tables and text; plotly.js embedded once.

The page needs no network: plotly.js (the copy bundled with the plotly package) is inlined
in one <script> in <head>, and every figure after it only calls `Plotly.newPlot`. Text and
table cells are HTML-escaped; links are made only for http(s) URLs, so a stored URL such
as `javascript:…` stays inert text.

    from worker.report.page import Link, Section, Table, render_page, write_page

    html = render_page("Model comparison", [
        Section("Label flips", [figure, Table(["lang", "flips"], [["en", 3]])], intro="Per language."),
        Section("Documents", [Table(["text", "link"], [["…", Link("open", "https://example.com/a")]])]),
    ], subtitle="2026-11-28 08:00 to 09:00 UTC")
    write_page(Path("compare.html"), html)

In the browser each figure is a `div.plotly-graph-div` inside `figure.chart`, each table a
`table.data` (with `id` when given), each section a `section` (with `id` when given).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Union

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

__all__ = ["Cell", "Item", "Link", "Section", "Table", "render_page", "write_page"]

_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}


@dataclass(frozen=True)
class Link:
    """A table cell that links to `href` when it is an http(s) URL, else shows `text` alone."""

    text: str
    href: str | None = None


Cell = Union[str, int, float, datetime, Link, None]


@dataclass
class Table:
    """A plain HTML table; numbers are right-aligned, floats shown with `float_format`."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    id: str | None = None
    float_format: str = "{:+.3f}"
    empty: str = "nothing in this period"


Item = Union[go.Figure, Table, str]  # a str is a paragraph of plain text


@dataclass
class Section:
    """A heading, an optional paragraph, then its items in order."""

    title: str
    items: Sequence[Item] = field(default_factory=list)
    intro: str = ""
    id: str | None = None


def render_page(title: str, sections: Sequence[Section], *, subtitle: str = "") -> str:
    """The whole page as one HTML string (a few MB: plotly.js is inlined once)."""
    used_ids: set[str] = set()
    body = "\n".join(_section(section, index, used_ids) for index, section in enumerate(sections))
    subtitle_html = f'<p class="subtitle">{_e(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{_plotly_js()}</script>\n</head>\n<body>\n<header><h1>{_e(title)}</h1>{subtitle_html}</header>\n"
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_page(path: Path, page: str) -> Path:
    """Write the page (UTF-8), creating its folder; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


@cache
def _plotly_js() -> str:
    return get_plotlyjs().replace("</script", "<\\/script")  # never close the inline script early


def _section(section: Section, index: int, used_ids: set[str]) -> str:
    anchor = _unique(section.id or _slug(section.title) or f"section-{index}", used_ids)
    parts = [f'<section id="{_e(anchor)}">', f"<h2>{_e(section.title)}</h2>"]
    if section.intro:
        parts.append(f'<p class="intro">{_e(section.intro)}</p>')
    for number, item in enumerate(section.items):
        if isinstance(item, go.Figure):
            div_id = _unique(f"{anchor}-chart-{number}", used_ids)
            figure = pio.to_html(item, include_plotlyjs=False, full_html=False, div_id=div_id, config=_PLOTLY_CONFIG)
            parts.append(f'<figure class="chart">{figure}</figure>')
        elif isinstance(item, Table):
            parts.append(_table(item, used_ids))
        else:
            parts.append(f"<p>{_e(item)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _table(table: Table, used_ids: set[str]) -> str:
    id_attr = f' id="{_e(_unique(table.id, used_ids))}"' if table.id else ""
    head = "".join(f"<th>{_e(column)}</th>" for column in table.columns)
    if not table.rows:
        body = f'<tr><td class="empty" colspan="{len(table.columns)}">{_e(table.empty)}</td></tr>'
    else:
        body = "\n".join("<tr>" + "".join(_cell(value, table.float_format) for value in row) + "</tr>" for row in table.rows)
    return f'<div class="table-wrap"><table class="data"{id_attr}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def _cell(value: Cell, float_format: str) -> str:
    if isinstance(value, Link):
        if value.href and re.match(r"^https?://", value.href, re.IGNORECASE):
            return f'<td><a href="{_e(value.href)}" target="_blank" rel="noopener noreferrer">{_e(value.text)}</a></td>'
        return f"<td>{_e(value.text)}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else _e(str(value))}</td>"
    if isinstance(value, float):
        return f'<td class="num">{_e(float_format.format(value))}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, datetime):
        return f'<td class="time">{_e(value.strftime("%Y-%m-%d %H:%M:%S"))}</td>'
    return f"<td>{_e(value)}</td>"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _unique(candidate: str, used: set[str]) -> str:
    name, n = candidate, 2
    while name in used:
        name, n = f"{candidate}-{n}", n + 1
    used.add(name)
    return name


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; margin: 0; color: #1f2933;
       background: #f5f7fa; }
header { background: #102a43; color: #f0f4f8; padding: 1.2rem 2rem; }
header h1 { margin: 0; font-size: 1.6rem; }
.subtitle { margin: .3rem 0 0; color: #bcccdc; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 2rem 3rem; }
section { background: #fff; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.08); margin: 1.2rem 0;
          padding: .8rem 1.2rem 1rem; }
h2 { font-size: 1.2rem; margin: .4rem 0 .6rem; }
.intro { color: #52606d; margin-top: 0; }
figure.chart { margin: 0 0 .8rem; }
.table-wrap { overflow-x: auto; }
table.data { border-collapse: collapse; width: 100%; font-size: .88rem; }
table.data th, table.data td { border-bottom: 1px solid #e4e7eb; padding: .35rem .5rem; text-align: left;
                               vertical-align: top; }
table.data th { background: #f0f4f8; font-weight: 600; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data td.time { white-space: nowrap; }
table.data td.empty { color: #7b8794; font-style: italic; }
a { color: #0b69a3; }
"""
