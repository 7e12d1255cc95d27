"""The report's data shaping: bucket sizes, series, alert placement, topic totals, percentiles, timings."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from worker.report.charts import (
    alert_points,
    bucket_size,
    describe_seconds,
    label_totals,
    percentile,
    series_by_key,
    timing,
)
from worker.store.reports import BucketCount

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
TS0 = int(T0.timestamp())


@pytest.mark.parametrize(("span_s", "expected"), [(1, 1), (120, 1), (121, 2), (1800, 15), (3600, 30), (86400, 900),
                                                   (30 * 86400, 21600), (31 * 86400, 43200), (10**9, 604800)])
def test_bucket_size_keeps_at_most_120_points(span_s: int, expected: int) -> None:
    assert bucket_size(span_s) == expected
    assert bucket_size(1800, max_points=48) == 60


def test_series_sum_labels_per_bucket_and_keep_the_requested_order() -> None:
    rows = [
        BucketCount("KO", TS0 + 60, "positive", 1, 0.8),
        BucketCount("TSLA", TS0 + 60, "negative", 2, -1.6),
        BucketCount("TSLA", TS0, "negative", 1, -0.9),
        BucketCount("TSLA", TS0, "positive", 3, 2.1),
    ]
    series = series_by_key(rows, ["TSLA", "NVDA", "KO"])
    assert list(series) == ["TSLA", "KO"]  # NVDA has no documents
    tsla = series["TSLA"]
    assert tsla.bucket_ts == [TS0, TS0 + 60]
    assert tsla.volume == [4, 2] and tsla.negative == [1, 2]
    assert tsla.mean_score == [pytest.approx(1.2 / 4), pytest.approx(-0.8)]
    assert list(series_by_key(rows)) == ["KO", "TSLA"]


def _alert(key_type: str, key: str, start: datetime, **extra: object) -> dict:
    return {"key_type": key_type, "key": key, "window_start": start, "window_s": 300, "subscription_name": "busy",
            "rule": "threshold", "metric": "volume", "observed": 27.0, "threshold": 25.0, "volume": 27, **extra}


def test_alerts_sit_on_their_series_at_their_bucket_or_the_nearest() -> None:
    series = series_by_key([BucketCount("TSLA", TS0 + m * 60, "neutral", 1, m / 10) for m in (0, 1, 5)])
    alerts = [
        _alert("entity", "TSLA", T0 + timedelta(minutes=1, seconds=20)),  # inside the 09:01 bucket
        _alert("entity", "TSLA", (T0 + timedelta(minutes=4)).replace(tzinfo=None)),  # SQLite: naive UTC; nearest is 09:05
        _alert("entity", "KO", T0),  # no KO series: not drawn
        _alert("lang", "TSLA", T0),  # another key type
    ]
    points = alert_points(alerts, series, "entity", 60)
    assert [(p.key, p.bucket_ts, p.score) for p in points] == [("TSLA", TS0 + 60, 0.1), ("TSLA", TS0 + 300, 0.5)]
    assert "busy (threshold): volume 27 vs 25, window 5 min" in points[0].text


def test_label_totals_biggest_first() -> None:
    rows = [("m&a", "negative", 2), ("earnings", "positive", 5), ("m&a", "positive", 4), ("macro", "neutral", 1)]
    assert label_totals(rows, limit=2) == [
        ("m&a", {"negative": 2, "neutral": 0, "positive": 4}),
        ("earnings", {"negative": 0, "neutral": 0, "positive": 5}),
    ]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_timing_buckets_stored_times_and_measures_latencies() -> None:
    rows = [
        (T0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=2.5)),
        (T0, T0 + timedelta(seconds=3), (T0 + timedelta(seconds=200)).replace(tzinfo=None)),  # SQLite's naive time
    ]
    shaped = timing(rows)
    assert shaped.bucket_s == 2  # 199 s of stored times in at most 120 buckets
    assert shaped.stored_per_bucket == [(TS0 + 2, 1), (TS0 + 200, 1)]
    assert shaped.event_to_stored == [2.5, 200.0]
    assert shaped.scored_to_stored == [0.5, 197.0]
    assert shaped.event_to_scored == [2.0, 3.0]
    assert timing([]).stored_per_bucket == []


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250 ms"), (5, "5 s"), (2.5, "2.5 s"), (60, "1 min"),
                                               (90, "1.5 min"), (3600, "1 h"), (259200, "3 d")])
def test_describe_seconds(seconds: float, text: str) -> None:
    assert describe_seconds(seconds) == text
