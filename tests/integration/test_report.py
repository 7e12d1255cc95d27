"""`finpulse report` on a store filled by a real worker, opened in headless Chromium (Debian's package).

A scripted half hour of four tickers in six languages goes through the worker on real Kafka,
Redis and PostgreSQL; two volume subscriptions fire exactly one alert each (TSLA and German,
both from a burst of German TSLA items in minute 20). The report command then writes the page,
and Chromium, driven by playwright, must render every chart without a console or page error,
draw both alerts on their series and show the negative documents with their links.

`FINPULSE_REPORT_SCREENSHOT=docs/report-screenshot.png` also saves the page there (the README's
picture): `FINPULSE_REPORT_SCREENSHOT=docs/report-screenshot.png pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.alerts import Rule, SubscriptionSpec
from worker.store.subscriptions import open_repository

from .browser import render
from .conftest import ROOT, Pipeline, wait_for
from .test_alerts import TEMPLATES, tiny_model  # noqa: F401  (the checkpoint that labels ~40% negative)

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # hour-aligned: the 300 s windows start on the minute marks below
TICKERS = ("TSLA", "AAPL", "KO", "NVDA")
LANGS = sorted(TEMPLATES)  # de en es fr ja zh
MINUTES, PER_MINUTE, BURST_MINUTE, BURST = 30, 3, 20, 12
CHARTS = ("entities-chart-0", "languages-chart-0", "volume-chart-0", "topics-chart-0", "throughput-chart-0",
          "throughput-chart-1")


def scripted_items() -> list[dict[str, Any]]:
    """3 items a minute per ticker, languages in turn, every other one with a URL; then the German TSLA burst."""
    items, n = [], 0
    for minute in range(MINUTES):
        for ticker in TICKERS:
            for k in range(PER_MINUTE):
                lang = LANGS[n % len(LANGS)]
                items.append(_item(f"{ticker}-{minute}-{k}", ticker, lang, minute, 20 * k + 1, n))
                n += 1
    for k in range(BURST):
        items.append(_item(f"TSLA-burst-{k}", "TSLA", "de", BURST_MINUTE, 4 * k + 2, n))
        n += 1
    return items


def _item(item_id: str, ticker: str, lang: str, minute: int, second: int, n: int) -> dict[str, Any]:
    return {
        "id": item_id,
        "source": ("newswire", "twitter", "blog")[n % 3],
        "lang": lang,
        "text": TEMPLATES[lang].format(t=ticker, n=n + 1),
        "published_at": (T0 + timedelta(minutes=minute, seconds=second)).isoformat(),
        **({"url": f"https://news.example.com/{item_id}"} if n % 2 == 0 else {}),
    }


async def _subscribe(database_url: str) -> None:
    rule = TypeAdapter(Rule).validate_python
    # Per 5 minutes: TSLA 15 items (27 with the burst), German 10 (22 with it).
    specs = [
        SubscriptionSpec(name="TSLA busy", key_type="entity", key="TSLA", window_s=300,
                         rule=rule({"type": "threshold", "metric": "volume", "value": 25, "min_count": 25})),
        SubscriptionSpec(name="German busy", key_type="lang", key="de", window_s=300,
                         rule=rule({"type": "threshold", "metric": "volume", "value": 18, "min_count": 18})),
    ]
    async with open_repository(database_url) as repository:
        for spec in specs:
            await repository.create(spec)


def _report(pipeline: Pipeline, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FINPULSE_DATABASE_URL": pipeline.db.url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "worker", "report", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_report_renders_in_chromium(pipeline: Pipeline, chromium: str, tmp_path: Path) -> None:
    asyncio.run(_subscribe(pipeline.db.url))
    items = scripted_items()
    pipeline.send_items(items)
    pipeline.wait_stored(len(items), timeout=240)
    burst_window = T0 + timedelta(minutes=BURST_MINUTE)
    wait_for(lambda: pipeline.db.count("SELECT count(*) FROM alerts") >= 2, 30, "two alerts", pipeline.worker)
    alerts = {(r["key_type"], r["key"], r["window_start"]) for r in pipeline.db.fetch("SELECT * FROM alerts")}
    assert alerts == {("entity", "TSLA", burst_window), ("lang", "de", burst_window)}
    negatives = pipeline.db.count("SELECT count(*) FROM documents WHERE sentiment_label = 'negative'")
    assert negatives > 0

    out = tmp_path / "report.html"
    done = _report(pipeline, out, "--from", "2026-11-27T09:00:00Z", "--to", "2026-11-27T10:00:00Z")
    assert done.returncode == 0, done.stderr
    assert f"{len(items)} documents" in done.stderr and "2 alerts" in done.stderr
    assert "entities: TSLA, AAPL, KO, NVDA" in done.stderr  # the subscribed one first, then the busiest

    page = _open_in_chromium(out, tmp_path / "report.png")
    assert page["errors"] == []
    assert page["requests"] == [out.as_uri()]  # offline: nothing but the file itself
    for div_id in CHARTS:
        chart = page["charts"][div_id]
        assert chart["rendered"] and chart["traces"] > 0 and chart["drawn_traces"] == chart["traces"], (div_id, chart)
        assert chart["marks"] > 0, (div_id, chart)
    assert page["charts"]["entities-chart-0"]["names"] == ["TSLA", "AAPL", "KO", "NVDA", "alerts"]
    assert page["charts"]["languages-chart-0"]["names"] == [*LANGS, "alerts"]
    for div_id, key in (("entities-chart-0", "TSLA"), ("languages-chart-0", "de")):
        markers = page["alert_markers"][div_id]
        assert markers["drawn"] == 1 and len(markers["text"]) == 1, markers
        assert markers["text"][0].startswith(f"{key}: alert: ") and markers["x"][0].replace("T", " ").startswith("2026-11-27 09:20"), markers
    table = page["negative_table"]
    assert table["rows"] == min(negatives, 20)
    assert table["links"] and all(href.startswith("https://news.example.com/") for href in table["links"])
    assert page["alerts_rows"] == 2

    # Errors a user makes end with one line and exit 2, never a traceback.
    empty = _report(pipeline, tmp_path / "empty.html", "--from", "2026-11-28T00:00:00Z", "--to", "2026-11-28T01:00:00Z")
    assert empty.returncode == 2 and "no documents between" in empty.stderr and f"holds {len(items)} documents" in empty.stderr
    for args, says in ((("--from", "yesterday", "--to", "2026-11-28T01:00"), "not an ISO 8601 time"),
                       (("--from", "2026-11-28T01:00", "--to", "2026-11-28T00:00"), "must be after"),
                       (("--from", "2026-11-27T09:00", "--to", "2026-11-27T10:00", "--model-version", "nope"), "nope")):
        bad = _report(pipeline, tmp_path / "bad.html", *args)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not (tmp_path / "empty.html").exists() and not (tmp_path / "bad.html").exists()


_INSPECT = """() => {
  const charts = {}, alertMarkers = {};
  for (const gd of document.querySelectorAll('.plotly-graph-div')) {
    const traces = gd.querySelectorAll('.main-svg g.trace');
    charts[gd.id] = {
      rendered: gd.classList.contains('js-plotly-plot') && gd.querySelector('.main-svg') !== null,
      traces: (gd.data || []).length,
      names: (gd.data || []).map(t => t.name),
      drawn_traces: traces.length,
      marks: [...gd.querySelectorAll('.main-svg g.trace path')].filter(p => (p.getAttribute('d') || '').length > 3).length,
    };
    const index = (gd.data || []).findIndex(t => t.name === 'alerts');
    if (index >= 0) {
      const layer = gd.querySelectorAll('.scatterlayer g.trace')[index];
      alertMarkers[gd.id] = {drawn: layer ? layer.querySelectorAll('path.point').length : 0,
                             text: gd.data[index].text, x: gd.data[index].x.map(String)};
    }
  }
  const negative = document.querySelector('#negative-documents');
  return {
    charts, alert_markers: alertMarkers,
    negative_table: negative && {rows: negative.querySelectorAll('tbody tr').length,
                                 links: [...negative.querySelectorAll('a')].map(a => a.href)},
    alerts_rows: document.querySelectorAll('#alerts-table tbody tr').length,
  };
}"""


def _open_in_chromium(path: Path, screenshot: Path) -> dict[str, Any]:
    wanted = (screenshot, os.environ["FINPULSE_REPORT_SCREENSHOT"]) if os.environ.get("FINPULSE_REPORT_SCREENSHOT") else (screenshot,)
    found = render(path, ready=f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(CHARTS) * 2}",
                   inspect=_INSPECT, screenshots=wanted)
    assert screenshot.stat().st_size > 10_000
    return found
