"""Documents and their aggregation keys in SQL: idempotent upserts keyed by (doc_id, model_version).

A redelivered or replayed batch overwrites itself instead of adding rows:
at-least-once delivery, exactly-once rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.news import ScoredItem
from schemas.tables import Document, DocumentKey
from worker.stages.aggregates import epoch_seconds, keys_of, window_start
from worker.store.database import Insert

_KEY = ("doc_id", "model_version")
_ROWS_PER_STATEMENT = 2000  # PostgreSQL takes at most 32767 parameters a statement

# (key_type, key, model_version) and the window starts (epoch s) to recompute, per window size.
Touched = dict[int, dict[tuple[str, str, str], set[int]]]


def document_row(item: ScoredItem) -> dict[str, Any]:
    return {
        "doc_id": item.id,
        "model_version": item.model_version,
        "source": item.source,
        "lang": item.lang,
        "text": item.text,
        "text_hash": item.text_hash,
        "published_at": item.published_at,
        "event_time": item.event_time,
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


def key_rows(item: ScoredItem) -> list[dict[str, Any]]:
    event_ts = epoch_seconds(item.event_time)
    return [
        {
            "doc_id": item.id,
            "model_version": item.model_version,
            "key_type": key_type,
            "key": key[:256],
            "event_ts": event_ts,
            "sentiment_label": item.sentiment.label,
            "sentiment_score": item.sentiment_score,
        }
        for key_type, key in keys_of(item)
    ]


class DocumentRepository:
    def __init__(self, conn: AsyncConnection, insert: Insert) -> None:
        self.conn = conn
        self._insert = insert

    async def upsert(self, items: Sequence[ScoredItem]) -> int:
        """Insert or overwrite each (id, model version); returns the rows written."""
        rows = [document_row(i) for i in items]
        if not rows:
            return 0
        stmt = self._insert(Document).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_KEY), set_={c: stmt.excluded[c] for c in rows[0] if c not in _KEY}
        )
        await self.conn.execute(stmt)
        return len(rows)

    async def replace_keys(self, items: Sequence[ScoredItem], windows: Sequence[int]) -> Touched:
        """Swap each document's key rows for its current ones; return every window either side touched."""
        ids = [(i.id, i.model_version) for i in items]
        old = await self.conn.execute(
            delete(DocumentKey)
            .where(tuple_(DocumentKey.doc_id, DocumentKey.model_version).in_(ids))
            .returning(DocumentKey.key_type, DocumentKey.key, DocumentKey.model_version, DocumentKey.event_ts)
        )
        new = [row for item in items for row in key_rows(item)]
        for start in range(0, len(new), _ROWS_PER_STATEMENT):
            await self.conn.execute(self._insert(DocumentKey).values(new[start : start + _ROWS_PER_STATEMENT]))
        touched: Touched = {w: {} for w in windows}
        new_keys = ((r["key_type"], r["key"], r["model_version"], r["event_ts"]) for r in new)
        for key_type, key, version, event_ts in [*old, *new_keys]:
            for w in windows:
                touched[w].setdefault((key_type, key, version), set()).add(window_start(event_ts, w))
        return touched
