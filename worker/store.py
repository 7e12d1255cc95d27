"""The SQL store: idempotent upserts of scored documents (PostgreSQL or SQLite, async).

Writes are keyed by (doc_id, model_version), so a redelivered or replayed batch
overwrites itself instead of adding rows: at-least-once delivery, exactly-once rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.news import ScoredItem
from schemas.tables import Document
from worker import metrics

log = logging.getLogger(__name__)

_KEY = ("doc_id", "model_version")


def document_row(item: ScoredItem) -> dict[str, Any]:
    return {
        "doc_id": item.id,
        "model_version": item.model_version,
        "source": item.source,
        "lang": item.lang,
        "text": item.text,
        "text_hash": item.text_hash,
        "published_at": item.published_at,
        "url": item.url,
        "author": item.author,
        "tickers": list(item.tickers),
        "entities": list(item.entities),
        "sentiment_label": item.sentiment.label,
        "sentiment_score": item.sentiment_score,
        "sentiment_probs": dict(item.sentiment.probs),
        "topic_label": item.topic.label,
        "topic_probs": dict(item.topic.probs),
        "scored_at": item.scored_at,
    }


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: the rows themselves are bad. Everything else is retried."""
    return isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError, ValueError, TypeError))


class DocumentStore:
    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            self._insert = postgresql.insert
        elif dialect == "sqlite":
            self._insert = sqlite.insert
        else:
            raise ValueError(f"unsupported database {dialect!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://")

    async def upsert(self, items: Sequence[ScoredItem]) -> None:
        """One statement, one transaction; raises on failure so the caller decides to retry."""
        rows = list({(r["doc_id"], r["model_version"]): r for r in map(document_row, items)}.values())
        if not rows:
            return
        stmt = self._insert(Document).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={c: stmt.excluded[c] for c in rows[0] if c not in _KEY},
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
        metrics.STORE_ROWS.inc(len(rows))

    async def close(self) -> None:
        await self.engine.dispose()


async def write_durably(
    store: DocumentStore,
    items: Sequence[ScoredItem],
    *,
    on_rejected: Callable[[ScoredItem, BaseException], Awaitable[None]],
    initial_s: float,
    max_s: float,
) -> None:
    """Return only once every item is stored or rejected: transient failures are retried forever.

    Kafka offsets of a batch are committed only after this returns, so an outage of
    the database holds the stream back instead of losing documents. A batch that the
    database refuses for its content is split until the bad rows are found and rejected.
    """
    delay = initial_s
    while True:
        try:
            await store.upsert(items)
            metrics.STORE_UP.set(1)
            return
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_permanent(exc):
                refused: BaseException = exc
                break
            metrics.STORE_UP.set(0)
            metrics.STORE_RETRIES.inc()
            log.warning("SQL write of %d rows failed (%s); retrying in %.1fs", len(items), _short(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)
    if len(items) == 1:
        log.error("SQL store rejected document %s: %s", items[0].id, _short(refused))
        await on_rejected(items[0], refused)
        return
    middle = len(items) // 2
    for half in (items[:middle], items[middle:]):
        await write_durably(store, half, on_rejected=on_rejected, initial_s=initial_s, max_s=max_s)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
