"""`finpulse report`'s reads and choices on SQLite (the demo's store): buckets, watched entities, versions, errors."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from schemas.alerts import Rule, SubscriptionSpec
from schemas.news import Prediction, ScoredItem
from worker.report.build import ReportError, ReportRequest, build_report
from worker.settings import StoreSettings
from worker.stages.persist import PersistStage
from worker.store.database import make_engine, upgrade
from worker.store.reports import Period, open_reports
from worker.store.subscriptions import SubscriptionRepository

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
TS0 = int(T0.timestamp())


def item(n: int, entity: str, label: str, *, second: int, version: str = "m1", lang: str = "en") -> ScoredItem:
    probs = {"negative": 0.05, "neutral": 0.05, "positive": 0.05, label: 0.9}
    return ScoredItem(
        id=f"{entity}-{n}", source="news", text=f"{entity} news {n}", text_hash="0" * 64, lang=lang,
        url=f"https://example.com/{entity}/{n}", entities=[entity],
        sentiment=Prediction(label=label, probs=probs), topic=Prediction(label="earnings", probs={"earnings": 1.0}),
        sentiment_score=probs["positive"] - probs["negative"], event_time=T0 + timedelta(seconds=second),
        model_version=version, scored_at=datetime.now(UTC), latency_ms=1.0, cached=False,
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """4 negative TSLA items (German) and 2 positive KO items in T0's first 2 minutes, one alert on TSLA, and
    one TSLA item re-scored by model m2."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade(url)

    async def fill() -> None:
        database = make_engine(url)
        try:
            rule = TypeAdapter(Rule).validate_python({"type": "threshold", "metric": "negative_count", "value": 3, "min_count": 3})
            repository = SubscriptionRepository(database)
            await repository.create(SubscriptionSpec(name="TSLA bad news", key_type="entity", key="TSLA", window_s=60, rule=rule))
            persist = PersistStage(database, StoreSettings(url=url, windows=[60, 300]))
            items = [item(n, "TSLA", "negative", second=10 * n, lang="de") for n in range(4)]
            items += [item(n, "KO", "positive", second=60 + n) for n in range(2)] + [item(0, "TSLA", "neutral", second=5, version="m2")]
            await persist.write(items, await repository.list())
        finally:
            await database.dispose()

    asyncio.run(fill())
    return url


def test_buckets_sum_labels_and_scores_per_key(store_url: str) -> None:
    async def read() -> list:
        async with open_reports(store_url) as reports:
            return await reports.buckets(Period(TS0, TS0 + 3600, "m1"), "entity", 60)

    rows = sorted((r.key, r.bucket_ts, r.label, r.count, round(r.score_sum, 6)) for r in asyncio.run(read()))
    assert rows == [("KO", TS0 + 60, "positive", 2, 1.7), ("TSLA", TS0, "negative", 4, -3.4)]


def test_the_report_of_a_period(store_url: str) -> None:
    said: list[str] = []
    report = asyncio.run(build_report(store_url, ReportRequest(T0, T0 + timedelta(hours=1), top=1), say=said.append))
    assert (report.model_version, report.documents, report.alerts) == ("m1", 6, 1)
    assert report.entities == ["TSLA"]  # subscribed (and alerted); top=1 leaves KO out
    assert any("several model versions" in note and "m2 (1)" in note for note in report.notes)
    assert said[0] == "reading the store…"
    html = report.html
    assert "TSLA: alert: TSLA bad news (threshold): negative_count 4 vs 3, window 1 min from 10:00:00, 4 docs" in html  # the marker's hover text
    negatives = re.findall(r'<a href="https://example.com/TSLA/(\d)"', html)
    assert sorted(negatives) == ["0", "1", "2", "3"]  # every negative document, linked
    assert "https://example.com/KO/" not in html  # positives are not among the most negative

    asked = asyncio.run(build_report(store_url, ReportRequest(T0, T0 + timedelta(hours=1), entities=["KO", "NVDA"],
                                                              model_version="m2")))
    assert (asked.model_version, asked.documents, asked.alerts, asked.entities) == ("m2", 1, 0, ["KO", "NVDA"])
    assert "no documents in this period for: KO, NVDA" in asked.notes


@pytest.mark.parametrize(("start", "end", "version", "says"), [
    (T0 + timedelta(hours=1), T0 + timedelta(hours=2), None,
     "no documents between 2026-11-28 11:00:00 UTC and 2026-11-28 12:00:00 UTC: the store holds 7 documents from"
     " 2026-11-28 10:00:00 UTC to 2026-11-28 10:01:01 UTC"),
    (T0, T0 - timedelta(seconds=1), None, "must be after"),
    (T0, T0 + timedelta(hours=1), "m3", "no documents of model version 'm3' in this period; it holds: m1, m2"),
])
def test_nothing_to_report_says_why(store_url: str, start: datetime, end: datetime, version: str | None, says: str) -> None:
    with pytest.raises(ReportError, match=re.escape(says)):
        asyncio.run(build_report(store_url, ReportRequest(start, end, model_version=version)))
