"""The persist stage's SQL on PostgreSQL itself, without Kafka: what SQLite cannot show.

PostgreSQL refuses values SQLite stores (NUL in text, strings over their column's length): such a
row must be isolated and rejected alone. Workers writing overlapping keys at once take their
advisory locks in one sorted call and must neither deadlock nor lose a window.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from schemas.news import Prediction, ScoredItem
from worker.settings import StoreSettings
from worker.stages.persist import PersistStage
from worker.stages.records import Accepted, Record
from worker.store.database import make_engine

from .conftest import Database, assert_aggregates_match_documents

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def scored(doc_id: str, n: int, *, text: str = "", version: str = "m1", entities: list[str] | None = None) -> ScoredItem:
    label = ("negative", "neutral", "positive")[n % 3]
    probs = {"negative": 0.1, "neutral": 0.1, "positive": 0.1, label: 0.8}
    return ScoredItem(
        id=doc_id,
        source=("news", "twitter")[n % 2],
        text=text or f"text of {doc_id}",
        text_hash="0" * 64,
        lang="en",
        entities=entities if entities is not None else ["TSLA", "AAPL"][: n % 3],
        sentiment=Prediction(label=label, probs=probs),
        topic=Prediction(label="earnings", probs={"earnings": 1.0}),
        sentiment_score=probs["positive"] - probs["negative"],
        event_time=T0 + timedelta(seconds=7 * n),
        model_version=version,
        scored_at=datetime.now(UTC),
        latency_ms=1.0,
        cached=False,
    )


async def test_a_row_postgresql_refuses_is_rejected_alone(database: Database) -> None:
    engine = make_engine(database.url)
    stage = PersistStage(engine, StoreSettings(url=database.url, retry_initial_s=0.01, retry_max_s=0.01))
    items = [scored(f"ok-{n}", n) for n in range(40)]
    items[5] = scored("nul", 5, text="a NUL \x00 in the text")
    items[23] = scored("long-version", 23, version="v" * 200)  # over the column's 128
    try:
        result = await stage([Accepted(Record(value=None, offset=n), item) for n, item in enumerate(items)])
        again = await stage([Accepted(Record(value=None, offset=n), item) for n, item in enumerate(items)])  # redelivered
    finally:
        await engine.dispose()
    for outcome in (result, again):
        assert [(r.record.offset, r.reason) for r in outcome.rejected] == [(5, "store_rejected"), (23, "store_rejected")]
        assert outcome.stored == 38
    assert await asyncio.to_thread(database.count) == 38  # its helpers run an event loop of their own
    assert await asyncio.to_thread(database.count, "SELECT count(*) FROM documents WHERE doc_id IN ('nul', 'long-version')") == 0
    assert await asyncio.to_thread(assert_aggregates_match_documents, database) > 0


async def test_workers_writing_the_same_keys_at_once_neither_deadlock_nor_lose_windows(database: Database) -> None:
    engine = make_engine(database.url)
    stages = [PersistStage(engine, StoreSettings(url=database.url)) for _ in range(4)]
    entities = ["AAPL", "BYD", "SONY", "TSLA", "TM"]

    def batch(worker: int, round_: int) -> list[ScoredItem]:
        order = entities if worker % 2 else entities[::-1]  # the same keys, met in opposite orders
        return [scored(f"w{worker}-r{round_}-{n}", n, entities=order[n % 3 : n % 3 + 3]) for n in range(60)]

    try:
        for round_ in range(3):
            await asyncio.wait_for(
                asyncio.gather(*(stage.write(batch(w, round_)) for w, stage in enumerate(stages))), timeout=60
            )
    finally:
        await engine.dispose()
    assert await asyncio.to_thread(database.count) == 4 * 3 * 60
    assert await asyncio.to_thread(assert_aggregates_match_documents, database) > 0
