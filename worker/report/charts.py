"""The report's charts: pure data shaping (tested on its own), then one plotly figure per chart.

Sentiment is the mean score, P(positive) - P(negative), of the documents in a bucket (-1 to +1).
Alerts are drawn as red markers on the series of their key, at the bucket holding the start of
the window that fired, and at that bucket's score, so they sit on the line they are about.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import plotly.graph_objects as go

from worker.stages.aggregates import as_datetime, as_utc, epoch_seconds
from worker.store.reports import BucketCount

LABELS = ("negative", "neutral", "positive")
COLOURS = {"negative": "#d64545", "neutral": "#9fb3c8", "positive": "#3ebd93"}
ALERT_COLOUR = "#c81e1e"
# Bucket sizes a reader recognises, seconds: from one second to a week.
NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


def bucket_size(span_s: int, max_points: int = 120) -> int:
    """The smallest nice bucket that splits `span_s` seconds into at most `max_points` buckets."""
    for size in NICE_BUCKETS:
        if span_s / size <= max_points:
            return size
    return NICE_BUCKETS[-1]


def describe_seconds(seconds: float) -> str:
    """60 -> '1 min', 3600 -> '1 h', 0.25 -> '250 ms': bucket sizes and latencies for people."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds == int(seconds) else f"{seconds:.1f} s"


@dataclass
class Series:
    """One key's buckets in time order: documents, negative documents and mean score of each."""

    key: str
    bucket_ts: list[int] = field(default_factory=list)
    volume: list[int] = field(default_factory=list)
    negative: list[int] = field(default_factory=list)
    mean_score: list[float] = field(default_factory=list)


def series_by_key(rows: Iterable[BucketCount], keys: Sequence[str] | None = None) -> dict[str, Series]:
    """Per-key series from (key, bucket, label) counts; in `keys` order when given, keys without rows left out."""
    totals: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0.0]))
    for row in rows:
        cell = totals[row.key][row.bucket_ts]
        cell[0] += row.count
        cell[1] += row.count if row.label == "negative" else 0
        cell[2] += row.score_sum
    order = [k for k in keys if k in totals] if keys is not None else sorted(totals)
    result = {}
    for key in order:
        series = Series(key)
        for bucket_ts in sorted(totals[key]):
            volume, negative, score_sum = totals[key][bucket_ts]
            series.bucket_ts.append(bucket_ts)
            series.volume.append(int(volume))
            series.negative.append(int(negative))
            series.mean_score.append(score_sum / volume if volume else 0.0)
        result[key] = series
    return result


@dataclass(frozen=True)
class AlertPoint:
    """Where an alert is drawn: its key's series, the bucket and score there, and what to say on hover."""

    key: str
    bucket_ts: int
    score: float
    text: str


def alert_points(alerts: Iterable[dict], series: dict[str, Series], key_type: str, bucket_s: int) -> list[AlertPoint]:
    """Alerts of `key_type` whose key has a series, placed on it; the nearest bucket if theirs holds no document."""
    points = []
    for alert in alerts:
        line = series.get(alert["key"])
        if alert["key_type"] != key_type or line is None or not line.bucket_ts:
            continue
        at = epoch_seconds(as_utc(alert["window_start"]))
        target = at - at % bucket_s
        index = min(range(len(line.bucket_ts)), key=lambda i: (abs(line.bucket_ts[i] - target), i))
        text = (f"alert: {alert['subscription_name']} ({alert['rule']}): {alert['metric']} {alert['observed']:g}"
                f" vs {alert['threshold']:g}, window {describe_seconds(alert['window_s'])} from"
                f" {as_utc(alert['window_start']):%H:%M:%S}, {alert['volume']} docs")
        points.append(AlertPoint(alert["key"], line.bucket_ts[index], line.mean_score[index], text))
    return points


def label_totals(rows: Iterable[tuple[str, str, int]], limit: int) -> list[tuple[str, dict[str, int]]]:
    """Per key, documents by sentiment label, the `limit` biggest keys first."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(LABELS, 0))
    for key, label, count in rows:
        totals[key][label] = totals[key].get(label, 0) + count
    return sorted(totals.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:limit]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the closest ranks; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Timing:
    """Throughput (documents stored per bucket) and latencies (seconds) of a period's documents."""

    bucket_s: int
    stored_per_bucket: list[tuple[int, int]]
    event_to_stored: list[float]
    scored_to_stored: list[float]
    event_to_scored: list[float]
    first_stored: datetime | None
    last_stored: datetime | None


def timing(rows: Sequence[tuple[datetime, datetime, datetime]], max_points: int = 120) -> Timing:
    """Shape (event_time, scored_at, stored_at) rows; buckets are sized to the span of stored_at."""
    rows = [(as_utc(e), as_utc(sc), as_utc(st)) for e, sc, st in rows]
    if not rows:
        return Timing(1, [], [], [], [], None, None)
    first, last = min(r[2] for r in rows), max(r[2] for r in rows)
    size = bucket_size(int((last - first).total_seconds()) + 1, max_points)
    counts: dict[int, int] = defaultdict(int)
    for _, _, stored in rows:
        ts = epoch_seconds(stored)
        counts[ts - ts % size] += 1
    return Timing(
        bucket_s=size,
        stored_per_bucket=sorted(counts.items()),
        event_to_stored=[(st - e).total_seconds() for e, _, st in rows],
        scored_to_stored=[(st - sc).total_seconds() for _, sc, st in rows],
        event_to_scored=[(sc - e).total_seconds() for e, sc, _ in rows],
        first_stored=first,
        last_stored=last,
    )


# --- figures -------------------------------------------------------------------------------------------------


def _x(epoch: int) -> datetime:
    """A time for plotly.js, which ignores offsets: UTC, without one."""
    return as_datetime(epoch).replace(tzinfo=None)


def _layout(figure: go.Figure, title: str, y_title: str, height: int = 380) -> go.Figure:
    figure.update_layout(
        title={"text": title, "x": 0.01}, height=height, margin={"l": 60, "r": 20, "t": 50, "b": 40},
        yaxis_title=y_title, legend={"orientation": "h", "y": -0.15}, template="plotly_white", hovermode="closest",
    )
    return figure


def sentiment_figure(title: str, series: dict[str, Series], alerts: Sequence[AlertPoint], bucket_s: int) -> go.Figure:
    """One line per key (mean score per bucket, marker size ~ documents) and the alerts as red markers."""
    figure = go.Figure()
    for key, line in series.items():
        figure.add_trace(go.Scatter(
            x=[_x(ts) for ts in line.bucket_ts], y=line.mean_score, mode="lines+markers", name=key,
            customdata=list(zip(line.volume, line.negative)),
            hovertemplate=f"{key}<br>%{{x}}<br>mean score %{{y:+.2f}}<br>%{{customdata[0]}} docs, %{{customdata[1]}} negative"
                          "<extra></extra>",
        ))
    if alerts:
        figure.add_trace(go.Scatter(
            x=[_x(p.bucket_ts) for p in alerts], y=[p.score for p in alerts], mode="markers", name="alerts",
            marker={"symbol": "triangle-down", "size": 15, "color": ALERT_COLOUR, "line": {"width": 1, "color": "#ffffff"}},
            text=[f"{p.key}: {p.text}" for p in alerts], hovertemplate="%{text}<extra></extra>",
        ))
    figure.update_yaxes(range=[-1.05, 1.05], zeroline=True)
    return _layout(figure, f"{title} (buckets of {describe_seconds(bucket_s)})", "mean score, P(pos) - P(neg)")


def volume_figure(series: Series | None, bucket_s: int) -> go.Figure:
    """Documents per bucket, stacked by label; `series` holds the global key's negatives and volumes."""
    figure = go.Figure()
    if series is not None:
        x = [_x(ts) for ts in series.bucket_ts]
        figure.add_trace(go.Bar(x=x, y=series.negative, name="negative", marker_color=COLOURS["negative"]))
        figure.add_trace(go.Bar(x=x, y=[v - n for v, n in zip(series.volume, series.negative)], name="not negative",
                                marker_color=COLOURS["neutral"]))
    figure.update_layout(barmode="stack")
    return _layout(figure, f"Documents per {describe_seconds(bucket_s)} (event time)", "documents", height=320)


def topic_figure(totals: Sequence[tuple[str, dict[str, int]]]) -> go.Figure:
    """Horizontal bars, one per topic, split by sentiment label; the biggest topic on top."""
    figure = go.Figure()
    topics = [key for key, _ in reversed(totals)]
    for label in LABELS:
        figure.add_trace(go.Bar(y=topics, x=[counts[label] for _, counts in reversed(totals)], name=label,
                                orientation="h", marker_color=COLOURS[label]))
    figure.update_layout(barmode="stack")
    return _layout(figure, "Topic mix", "", height=max(300, 60 + 26 * len(totals)))


def throughput_figure(shaped: Timing) -> go.Figure:
    """Documents stored per second, averaged over each bucket of stored_at."""
    figure = go.Figure(go.Bar(
        x=[_x(ts) for ts, _ in shaped.stored_per_bucket],
        y=[count / shaped.bucket_s for _, count in shaped.stored_per_bucket], name="stored", marker_color="#2680c2",
    ))
    return _layout(figure, f"Documents stored per second (mean over {describe_seconds(shaped.bucket_s)}, stored time)",
                   "documents / s", height=320)


def latency_figure(shaped: Timing) -> go.Figure:
    """Box plots of the three latencies, seconds."""
    figure = go.Figure()
    for name, values in (("event → stored", shaped.event_to_stored), ("scored → stored", shaped.scored_to_stored),
                         ("event → scored", shaped.event_to_scored)):
        figure.add_trace(go.Box(x=values, name=name, boxpoints=False, orientation="h"))
    figure.update_xaxes(type="log" if _spread(shaped.event_to_stored + shaped.scored_to_stored) else "linear")
    return _layout(figure, "Latency per document", "", height=300).update_layout(xaxis_title="seconds", showlegend=False)


def _spread(values: Sequence[float]) -> bool:
    """Log axis when the latencies span more than two decades (event time can be hours before a replay)."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / max(min(positive), 1e-3) > 100
