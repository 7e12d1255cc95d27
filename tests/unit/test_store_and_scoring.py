"""The SQL store on embedded SQLite (migrated with Alembic) and the scorer without Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from engines import load_engine
from engines.training.tiny import build_tiny_checkpoint
from schemas.news import NewsItem, Prediction, ScoredItem
from worker import metrics
from worker.settings import CacheSettings, StoreSettings
from worker.stages.aggregates import brute_force, keys_of
from worker.stages.cache import ScoreCache
from worker.stages.entities import Watchlist
from worker.stages.persist import PersistStage
from worker.stages.records import Accepted, Record
from worker.stages.score import ScoreStage
from worker.store.database import make_engine, upgrade


def scored(doc_id: str, *, version: str = "m1", label: str = "neutral", source: str = "news") -> ScoredItem:
    probs = {"negative": 0.2, "neutral": 0.5, "positive": 0.3}
    return ScoredItem(
        id=doc_id,
        source=source,
        text=f"text of {doc_id}",
        text_hash="0" * 64,
        lang="en",
        sentiment=Prediction(label=label, probs=probs),
        topic=Prediction(label="earnings", probs={"earnings": 1.0}),
        sentiment_score=0.1,
        event_time=datetime(2026, 11, 28, 10, 0, 30, tzinfo=UTC),
        model_version=version,
        scored_at=datetime.now(UTC),
        latency_ms=1.0,
        cached=False,
    )


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await asyncio.to_thread(upgrade, url)  # Alembic's env runs its own event loop
    database = make_engine(url)
    yield PersistStage(database, StoreSettings(url=url, retry_initial_s=0.01, retry_max_s=0.01))
    await database.dispose()


async def rows(store: PersistStage) -> list[tuple]:
    async with store.database.connect() as conn:
        result = await conn.execute(text("SELECT doc_id, model_version, sentiment_label FROM documents ORDER BY 1, 2"))
        return [tuple(r) for r in result]


async def test_upsert_is_idempotent_and_keyed_by_model_version(store: PersistStage) -> None:
    await store.write([scored("a"), scored("b")])
    await store.write([scored("a"), scored("b")])  # a redelivered batch
    await store.write([scored("a", version="m2", label="positive")])  # a re-score with a new model
    await store.write([scored("b", label="negative"), scored("b", label="positive")])  # same key twice in one batch
    assert await rows(store) == [("a", "m1", "neutral"), ("a", "m2", "positive"), ("b", "m1", "positive")]


async def test_rows_the_database_refuses_are_isolated_and_rejected(store: PersistStage) -> None:
    async with store.database.begin() as conn:
        await conn.execute(
            text("CREATE TRIGGER refuse BEFORE INSERT ON documents WHEN NEW.source = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        )
    items = [scored(f"ok-{n}") for n in range(5)] + [scored("bad", source="poison")] + [scored("ok-5")]
    result = await store([Accepted(Record(value=None, offset=n), item) for n, item in enumerate(items)])
    assert [(r.record.offset, r.reason, r.stage) for r in result.rejected] == [(5, "store_rejected", "persist")]
    assert "poisoned row" in result.rejected[0].detail
    assert result.stored == 6
    assert [r[0] for r in await rows(store)] == [f"ok-{n}" for n in range(6)]


async def test_scorer_scores_each_distinct_text_once_without_a_cache(tmp_path: Path) -> None:
    engine = load_engine(build_tiny_checkpoint(tmp_path / "tiny"), "torch")
    scorer = ScoreStage(engine, ScoreCache(CacheSettings(url=None), prefix="t:"), Watchlist.load(), None)
    items = [NewsItem(id=str(n), text=t) for n, t in enumerate(["Gewinn steigt", "利润下降", "Gewinn steigt"])]
    before = metrics.ENGINE_TEXTS._value.get()
    results = await scorer.score(items)
    await scorer.close()
    assert metrics.ENGINE_TEXTS._value.get() - before == 2
    assert [r.id for r in results] == ["0", "1", "2"]
    assert [r.cached for r in results] == [False, False, True]
    assert results[0].sentiment == results[2].sentiment
    assert all(r.model_version == engine.model_version for r in results)


async def stored_aggregates(store: PersistStage) -> dict[tuple, tuple]:
    async with store.database.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT window_s, window_start, key_type, key, model_version, count_negative, count_neutral,"
                " count_positive, volume, score_sum FROM aggregates"
            )
        )
        out = {}
        for w, start, kt, k, v, neg, neu, pos, vol, ssum in result:
            start = datetime.fromisoformat(str(start)).replace(tzinfo=UTC)
            out[(w, int(start.timestamp()), kt, k, v)] = (neg, neu, pos, vol, round(ssum, 6))
        return out


def expected_aggregates(items: list[ScoredItem], windows: tuple[int, ...]) -> dict[tuple, tuple]:
    latest = {(i.id, i.model_version): i for i in items}.values()
    docs = [(i.model_version, i.event_time, i.sentiment.label, i.sentiment_score, keys_of(i)) for i in latest]
    out = {}
    for w in windows:
        for (start, kt, k, v), st in brute_force(docs, w).items():
            out[(w, start, kt, k, v)] = (st.negative, st.neutral, st.positive, st.volume, round(st.score_sum, 6))
    return out


async def test_aggregates_always_equal_a_recomputation_from_documents(store: PersistStage) -> None:
    base = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    def item(doc_id: str, seconds: int, label: str, entities: list[str], **kw) -> ScoredItem:
        scored_item = scored(doc_id, label=label, **kw)
        return scored_item.model_copy(
            update={"event_time": base + timedelta(seconds=seconds), "entities": entities, "sentiment_score": {"negative": -0.5, "neutral": 0.0, "positive": 0.7}[label]}
        )

    history: list[ScoredItem] = []

    async def write(*items: ScoredItem) -> None:
        history.extend(items)
        await store.write(list(items))
        assert await stored_aggregates(store) == expected_aggregates(history, store.windows)

    await write(item("a", 5, "negative", ["TSLA"]), item("b", 50, "positive", ["TSLA", "AAPL"]))
    await write(item("c", 65, "neutral", []), item("d", 400, "negative", ["AAPL"], source="weibo"))
    await write(item("a", 5, "negative", ["TSLA"]))  # redelivered: nothing changes
    await write(item("e", 10, "positive", ["NVDA"]))  # late: lands in its own (old) window
    await write(item("b", 50, "negative", ["NVDA"]))  # re-scored with new entities: TSLA/AAPL windows shrink
    await write(item("b", 50, "positive", ["TSLA"], version="m2"))  # a second model beside the first
    await write(item("c", 65, "neutral", []).model_copy(update={"sentiment_score": 0.25}))  # the score alone changes
    assert (60, int(base.timestamp()), "entity", "AAPL", "m1") not in await stored_aggregates(store)


async def test_the_write_compiles_its_statements_once_whatever_the_batch(store: PersistStage) -> None:
    """`insert().values(rows)` compiled a new statement for every batch (issue 12); cached statements compile once."""
    await store.write([scored(f"a-{n}") for n in range(3)])
    compiled = store.database.sync_engine._compiled_cache
    size = len(compiled)
    await store.write([scored(f"b-{n}", source=f"source-{n}") for n in range(7)])  # more rows, more keys
    assert len(compiled) == size
