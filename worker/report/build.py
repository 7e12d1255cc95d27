"""`finpulse report`: one period of the SQL store as a self-contained HTML page.

Which model version: `model_version` when given, else the live one (`finpulse promote`), else the
one with the most documents in the period (a re-scored period holds several; mixing them would
count each document twice).
Which entities: the ones asked for, else those that subscriptions name or that alerted in the
period, topped up with the busiest ones to `top`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.report import charts
from worker.report.page import Link, Section, Table, render_page
from worker.stages.aggregates import as_utc, epoch_seconds
from worker.store.reports import Period, ReportRepository, open_reports

MAX_TIMINGS = 200_000  # documents whose timestamps the throughput and latency charts read


class ReportError(Exception):
    """Nothing to report (an empty period, an unknown model version): a message for the user."""


@dataclass
class ReportRequest:
    start: datetime
    end: datetime
    entities: Sequence[str] = ()
    model_version: str | None = None
    top: int = 6
    negative_limit: int = 20


@dataclass
class Report:
    html: str
    model_version: str
    documents: int
    entities: list[str]
    alerts: int
    notes: list[str] = field(default_factory=list)


async def build_report(database_url: str, request: ReportRequest, say: Callable[[str], None] = lambda _: None) -> Report:
    """Read the period from the store and render the page; ReportError when there is nothing to show."""
    start_ts, end_ts = epoch_seconds(as_utc(request.start)), epoch_seconds(as_utc(request.end))
    if end_ts <= start_ts:
        raise ReportError(f"--to ({_when(request.end)}) must be after --from ({_when(request.start)})")
    async with open_reports(database_url) as store:
        say("reading the store…")
        period, notes = await _period(store, start_ts, end_ts, request.model_version)
        first_ts, last_ts, documents = await store.span(period)
        bucket_s = charts.bucket_size(last_ts - first_ts + 1, max_points=48)  # a few documents per point
        entities = list(request.entities) or await _watched(store, period, request.top)
        alerts = await store.alerts(period)
        say(f"{documents} documents of model {period.model_version}; entities: {', '.join(entities) or 'none'};"
            f" {len(alerts)} alerts")
        by_entity = charts.series_by_key(await store.buckets(period, "entity", bucket_s, entities), entities)
        by_lang = charts.series_by_key(await store.buckets(period, "lang", bucket_s))
        volume = charts.series_by_key(await store.buckets(period, "global", bucket_s)).get("*")
        topics = charts.label_totals(await store.label_counts(period, "topic"), limit=20)
        negative = await store.most_negative(period, request.negative_limit)
        say("reading timestamps for throughput and latency…")
        timings = await store.timings(period, MAX_TIMINGS)
    missing = [e for e in entities if e not in by_entity]
    if missing:
        notes.append(f"no documents in this period for: {', '.join(missing)}")
    if len(timings) == MAX_TIMINGS:
        notes.append(f"throughput and latency from the first {MAX_TIMINGS} documents stored")
    say("drawing the charts…")
    shaped = charts.timing(timings)
    early = sum(1 for seconds in shaped.scored_to_stored if seconds < 0)
    if early:
        notes.append(f"{early} documents have stored_at before scored_at: SQLite keeps stored_at to the second, and a"
                     " re-scored document keeps the stored_at of its first write")
    sections = [
        _overview(period, documents, entities, alerts, notes),
        Section("Sentiment per entity", [charts.sentiment_figure(
            "Mean sentiment per entity", by_entity, charts.alert_points(alerts, by_entity, "entity", bucket_s), bucket_s,
        )], intro="Mean score of each bucket's documents; red triangles: alerts fired for that entity.", id="entities"),
        Section("Sentiment per language", [charts.sentiment_figure(
            "Mean sentiment per language", by_lang, charts.alert_points(alerts, by_lang, "lang", bucket_s), bucket_s,
        )], id="languages"),
        Section("Volume", [charts.volume_figure(volume, bucket_s)], id="volume"),
        Section("Topic mix", [charts.topic_figure(topics)], id="topics"),
        Section("Most negative documents", [_negative_table(negative)],
                intro="Labelled negative, lowest score (P(positive) - P(negative)) first.", id="negative"),
        Section("Alerts", [_alerts_table(alerts)], id="alerts"),
        _throughput(shaped),
    ]
    subtitle = f"{_when(request.start)} to {_when(request.end)} (event time) · model {period.model_version}"
    page = render_page("finpulse report", sections, subtitle=subtitle)
    return Report(page, period.model_version, documents, entities, len(alerts), notes)


async def _period(store: ReportRepository, start_ts: int, end_ts: int, wanted: str | None) -> tuple[Period, list[str]]:
    versions = await store.model_versions(start_ts, end_ts)
    if not versions:
        stored = await store.stored_range()
        where = (f"the store holds {stored[2]} documents from {_when(stored[0])} to {_when(stored[1])}"
                 if stored else "the store holds no documents")
        raise ReportError(f"no documents between {_when_ts(start_ts)} and {_when_ts(end_ts)}: {where}")
    names = [name for name, _ in versions]
    if wanted is not None and wanted not in names:
        raise ReportError(f"no documents of model version {wanted!r} in this period; it holds: {', '.join(names)}")
    notes = []
    if wanted is None and len(versions) > 1:
        others = ", ".join(f"{name} ({count})" for name, count in versions[1:])
        notes.append(f"several model versions in this period; showing {versions[0][0]}, the live one or else the most documents"
                     f" (others: {others}; choose with --model-version)")
    return Period(start_ts, end_ts, wanted or names[0]), notes


async def _watched(store: ReportRepository, period: Period, top: int) -> list[str]:
    """Subscribed entities, then entities that alerted, then the busiest, up to `top` (at least the named ones)."""
    named = await store.subscribed_keys("entity")
    alerted = [a["key"] for a in await store.alerts(period) if a["key_type"] == "entity"]
    busiest = [key for key, _ in await store.top_keys(period, "entity", top)]
    chosen: list[str] = []
    for key in [*named, *alerted, *busiest]:
        if key not in chosen and (len(chosen) < top or key in named):
            chosen.append(key)
    return chosen


def _overview(period: Period, documents: int, entities: list[str], alerts: list[dict], notes: list[str]) -> Section:
    rows = [["documents", documents], ["model version", period.model_version],
            ["entities shown", ", ".join(entities) or "none"], ["alerts", len(alerts)]]
    return Section("Overview", [Table(["", ""], rows, id="overview"), *notes], id="overview-section")


def _negative_table(rows: list[dict]) -> Table:
    columns = ["event time", "lang", "source", "entities", "topic", "score", "P(negative)", "text"]
    table_rows = [
        [as_utc(r["event_time"]), r["lang"] or "", r["source"], ", ".join(r["entities"] or []), r["topic_label"],
         float(r["sentiment_score"]), f"{float(r['sentiment_probs'].get('negative', 0.0)):.2f}",
         Link(_short(r["text"]), r["url"])]
        for r in rows
    ]
    return Table(columns, table_rows, id="negative-documents", empty="no document labelled negative in this period")


def _alerts_table(alerts: list[dict]) -> Table:
    columns = ["window start", "window", "subscription", "rule", "key", "metric", "observed", "threshold", "docs"]
    rows = [
        [as_utc(a["window_start"]), charts.describe_seconds(a["window_s"]), a["subscription_name"], a["rule"],
         f"{a['key_type']}:{a['key']}", a["metric"], f"{a['observed']:g}", f"{a['threshold']:g}", a["volume"]]
        for a in alerts
    ]
    return Table(columns, rows, id="alerts-table", empty="no alert fired in this period")


def _throughput(shaped: charts.Timing) -> Section:
    if not shaped.stored_per_bucket:
        return Section("Throughput and latency", ["no documents"], id="throughput")
    span = max((shaped.last_stored - shaped.first_stored).total_seconds(), 1.0)  # type: ignore[operator]
    peak = max(count for _, count in shaped.stored_per_bucket) / shaped.bucket_s
    rows = [
        [name, charts.describe_seconds(charts.percentile(values, 50)), charts.describe_seconds(charts.percentile(values, 95)),
         charts.describe_seconds(charts.percentile(values, 99)), charts.describe_seconds(max(values))]
        for name, values in (("event time → stored", shaped.event_to_stored), ("scored → stored", shaped.scored_to_stored),
                             ("event time → scored", shaped.event_to_scored))
    ]
    intro = (f"{len(shaped.event_to_stored)} documents stored from {_when(shaped.first_stored)} to"  # type: ignore[arg-type]
             f" {_when(shaped.last_stored)}: {len(shaped.event_to_stored) / span:.1f} documents/s on average,"  # type: ignore[arg-type]
             f" {peak:.1f}/s at the busiest {charts.describe_seconds(shaped.bucket_s)}.")
    return Section("Throughput and latency", [charts.throughput_figure(shaped), charts.latency_figure(shaped),
                                              Table(["latency", "p50", "p95", "p99", "max"], rows, id="latency-table")],
                   intro=intro, id="throughput")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(moment: datetime) -> str:
    return as_utc(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
