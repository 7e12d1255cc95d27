"""Documents and their aggregation keys in SQL: idempotent upserts keyed by (doc_id, model_version).

A redelivered or replayed batch overwrites itself instead of adding rows:
at-least-once delivery, exactly-once rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import String, bindparam, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.news import ScoredItem
from schemas.tables import Document, DocumentKey
from worker.stages.aggregates import epoch_seconds, keys_of, window_start
from worker.store.database import Insert

_KEY = ("doc_id", "model_version")
_OLD_KEYS = (
    DocumentKey.key_type, DocumentKey.key, DocumentKey.model_version, DocumentKey.event_ts,
    DocumentKey.sentiment_label, DocumentKey.sentiment_score,
)
# PostgreSQL takes the batch's ids as two arrays: one statement text whatever the batch's size, where a
# tuple IN of 500 pairs costs more to parse and plan (500 index scans OR-ed) than to run.
_IDS = (
    func.unnest(bindparam("doc_ids", type_=ARRAY(String)), bindparam("versions", type_=ARRAY(String)))
    .table_valued("doc_id", "model_version")
    .render_derived()
)
_DELETE_KEYS_POSTGRESQL = (
    delete(DocumentKey)
    .where(tuple_(DocumentKey.doc_id, DocumentKey.model_version).in_(select(_IDS.c.doc_id, _IDS.c.model_version)))
    .returning(*_OLD_KEYS)
)

# (window_s, window start in epoch s, key_type, key, model_version) -> what a batch changed in that window:
# [count_negative, count_neutral, count_positive, volume, score_sum], the new key rows counted in, the old out.
WindowKey = tuple[int, int, str, str, str]
Deltas = dict[WindowKey, list[float]]
_COUNT_OF = {"negative": 0, "neutral": 1, "positive": 2}


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


@cache
def _statements(insert: Insert) -> tuple[Any, Any]:
    """The upsert and the key insert, built once per dialect: executed with a list of rows (executemany), their
    compiled form is reused, where `values(rows)` would build and compile a new statement for every batch."""
    upsert = insert(Document)
    overwrite = {c.name: upsert.excluded[c.name] for c in Document.__table__.c if c.name not in (*_KEY, "stored_at")}
    return upsert.on_conflict_do_update(index_elements=list(_KEY), set_=overwrite), insert(DocumentKey)


class DocumentRepository:
    def __init__(self, conn: AsyncConnection, insert: Insert) -> None:
        self.conn = conn
        self._upsert, self._insert_keys = _statements(insert)

    async def upsert(self, items: Sequence[ScoredItem]) -> int:
        """Insert or overwrite each (id, model version); returns the rows written."""
        rows = [document_row(i) for i in items]
        if not rows:
            return 0
        await self.conn.execute(self._upsert, rows)
        return len(rows)

    async def replace_keys(self, items: Sequence[ScoredItem], windows: Sequence[int]) -> Deltas:
        """Swap each document's key rows for its current ones; return what that changed in each window.

        The old rows come back from the DELETE itself, so a redelivered document cancels out (its window
        changes by zero) and a re-scored one moves its counts from the old label, key or window to the new."""
        if self.conn.dialect.name == "postgresql":
            ids = {"doc_ids": [i.id for i in items], "versions": [i.model_version for i in items]}
            old = await self.conn.execute(_DELETE_KEYS_POSTGRESQL, ids)
        else:
            pairs = [(i.id, i.model_version) for i in items]
            old = await self.conn.execute(
                delete(DocumentKey).where(tuple_(DocumentKey.doc_id, DocumentKey.model_version).in_(pairs)).returning(*_OLD_KEYS)
            )
        new = [row for item in items for row in key_rows(item)]
        if new:
            await self.conn.execute(self._insert_keys, new)
        deltas: Deltas = {}
        changes = [(-1, tuple(row)) for row in old] + [
            (1, (r["key_type"], r["key"], r["model_version"], r["event_ts"], r["sentiment_label"], r["sentiment_score"]))
            for r in new
        ]
        for sign, (key_type, key, version, event_ts, label, score) in changes:
            for w in windows:
                delta = deltas.setdefault((w, window_start(event_ts, w), key_type, key, version), [0, 0, 0, 0, 0.0])
                if label in _COUNT_OF:  # volume counts every label, the three counts their own
                    delta[_COUNT_OF[label]] += sign
                delta[3] += sign
                delta[4] += sign * score
        return deltas
