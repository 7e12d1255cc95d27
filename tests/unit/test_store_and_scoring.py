"""The SQL store on embedded SQLite (migrated with Alembic) and the scorer without Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from engines import load_engine
from engines.tiny import build_tiny_checkpoint
from schemas.news import NewsItem, Prediction, ScoredItem
from worker import metrics
from worker.cache import ScoreCache
from worker.database import upgrade
from worker.scoring import Scorer
from worker.store import DocumentStore, write_durably


def scored(doc_id: str, *, version: str = "m1", label: str = "neutral", source: str = "news") -> ScoredItem:
    probs = {"negative": 0.2, "neutral": 0.5, "positive": 0.3}
    return ScoredItem(
        id=doc_id,
        source=source,
        text=f"text of {doc_id}",
        text_hash="0" * 64,
        sentiment=Prediction(label=label, probs=probs),
        topic=Prediction(label="earnings", probs={"earnings": 1.0}),
        sentiment_score=0.1,
        model_version=version,
        scored_at=datetime.now(UTC),
        latency_ms=1.0,
        cached=False,
    )


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await asyncio.to_thread(upgrade, url)  # Alembic's env runs its own event loop
    store = DocumentStore(url)
    yield store
    await store.close()


async def rows(store: DocumentStore) -> list[tuple]:
    async with store.engine.connect() as conn:
        result = await conn.execute(text("SELECT doc_id, model_version, sentiment_label FROM documents ORDER BY 1, 2"))
        return [tuple(r) for r in result]


async def test_upsert_is_idempotent_and_keyed_by_model_version(store: DocumentStore) -> None:
    await store.upsert([scored("a"), scored("b")])
    await store.upsert([scored("a"), scored("b")])  # a redelivered batch
    await store.upsert([scored("a", version="m2", label="positive")])  # a re-score with a new model
    await store.upsert([scored("b", label="negative"), scored("b", label="positive")])  # same key twice in one batch
    assert await rows(store) == [("a", "m1", "neutral"), ("a", "m2", "positive"), ("b", "m1", "positive")]


async def test_rows_the_database_refuses_are_isolated_and_rejected(store: DocumentStore) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            text("CREATE TRIGGER refuse BEFORE INSERT ON documents WHEN NEW.source = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        )
    rejected: list[str] = []

    async def on_rejected(item: ScoredItem, exc: BaseException) -> None:
        rejected.append(item.id)

    batch = [scored(f"ok-{n}") for n in range(5)] + [scored("bad", source="poison")] + [scored("ok-5")]
    await write_durably(store, batch, on_rejected=on_rejected, initial_s=0.01, max_s=0.01)
    assert rejected == ["bad"]
    assert [r[0] for r in await rows(store)] == [f"ok-{n}" for n in range(6)]


async def test_scorer_scores_each_distinct_text_once_without_a_cache(tmp_path: Path) -> None:
    engine = load_engine(build_tiny_checkpoint(tmp_path / "tiny"), "torch")
    scorer = Scorer(engine, ScoreCache(None, prefix="t:", ttl_s=60, timeout_s=0.1, retry_s=1))
    items = [NewsItem(id=str(n), text=t) for n, t in enumerate(["Gewinn steigt", "利润下降", "Gewinn steigt"])]
    before = metrics.ENGINE_TEXTS._value.get()
    results = await scorer.score(items)
    scorer.close()
    assert metrics.ENGINE_TEXTS._value.get() - before == 2
    assert [r.id for r in results] == ["0", "1", "2"]
    assert [r.cached for r in results] == [False, False, True]
    assert results[0].sentiment == results[2].sentiment
    assert all(r.model_version == engine.model_version for r in results)
