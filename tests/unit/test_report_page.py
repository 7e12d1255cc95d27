"""The report page: plotly.js inlined once, nothing fetched from the network, text escaped, only http(s) links."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import plotly.graph_objects as go

from worker.report.page import Link, Section, Table, render_page


def _figure(name: str) -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[0.1, -0.2, 0.3], name=name))


def test_plotly_js_is_inlined_once_and_every_figure_gets_its_own_div() -> None:
    page = render_page("Report", [Section("A", [_figure("a"), _figure("b")]), Section("A", [_figure("c")])])
    assert page.count("plotly.js v") == 1  # the library's banner: one copy, whatever the figure count
    assert page.count('class="plotly-graph-div"') == 3
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)
    assert len(set(ids)) == 3  # two sections with one title still get distinct anchors and divs
    assert re.findall(r'<section id="([^"]+)"', page) == ["a", "a-2"]
    # Offline: no script or stylesheet comes from elsewhere.
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?:', page)


def test_text_is_escaped_and_only_http_links_are_links() -> None:
    rows = [
        ["<b>bold</b>", Link("safe", "https://example.com/a?b=1&c=2"), 0.5, 3],
        ["x", Link("inert", "javascript:alert(1)"), None, datetime(2026, 11, 28, 8, 0, 5, tzinfo=UTC)],
    ]
    page = render_page("T <x>", [Section("S", [Table(["text", "link", "score", "n"], rows, id="docs")], intro="a & b")])
    assert "<title>T &lt;x&gt;</title>" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert '<a href="https://example.com/a?b=1&amp;c=2"' in page
    body = page.split("<body>", 1)[1]  # plotly.js itself mentions javascript: URLs
    assert "javascript:" not in body and "<td>inert</td>" in body
    assert '<td class="num">+0.500</td>' in page and '<td class="num">3</td>' in page
    assert "2026-11-28 08:00:05" in page
    assert '<table class="data" id="docs">' in page
    assert "a &amp; b" in page


def test_an_empty_table_says_so() -> None:
    page = render_page("R", [Section("S", [Table(["a", "b"], [], empty="no documents")])])
    assert '<td class="empty" colspan="2">no documents</td>' in page
