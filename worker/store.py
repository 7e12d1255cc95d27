"""The SQL store: idempotent upserts of scored documents and their aggregates (async).

Writes are keyed by (doc_id, model_version), so a redelivered or replayed batch
overwrites itself instead of adding rows: at-least-once delivery, exactly-once rows.

Aggregates are recomputed from the stored documents' keys for every window a batch
touches, in the batch's transaction. They therefore always equal a recomputation from
the documents, whatever was redelivered, replayed, late or re-scored; on PostgreSQL an
advisory lock per key serialises workers that touch the same key at once.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import case, delete, func, select, text, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from schemas.aggregates import WindowAggregate
from schemas.alerts import Subscription
from schemas.news import ScoredItem
from schemas.tables import Aggregate, Document, DocumentKey
from worker import alerts, metrics
from worker.aggregates import as_datetime, epoch_seconds, keys_of, window_start

log = logging.getLogger(__name__)

_KEY = ("doc_id", "model_version")
_AGGREGATE_KEY = ("window_s", "window_start", "key_type", "key", "model_version")


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


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: the rows themselves are bad. Everything else is retried."""
    return isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError, ValueError, TypeError))


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


# (key_type, key, model_version) and the window starts (epoch s) to recompute, per window size.
Touched = dict[int, dict[tuple[str, str, str], set[int]]]


class DocumentStore:
    def __init__(self, url: str, windows: Sequence[int] = (60, 300, 3600)) -> None:
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self.windows = tuple(windows)
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            self._insert = postgresql.insert
        elif dialect == "sqlite":
            self._insert = sqlite.insert
        else:
            raise ValueError(f"unsupported database {dialect!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://")

    async def upsert(
        self,
        items: Sequence[ScoredItem],
        subscriptions: Sequence[Subscription] = (),
        *,
        deliver_webhooks: bool = True,
    ) -> list[WindowAggregate]:
        """Documents, their keys, the aggregates they touch and the alerts those fire, in one transaction.

        Raises on failure. Returns the recomputed aggregates, for the stream to emit once
        the transaction committed; fired alerts wait in the alerts table's outbox.
        """
        latest = {(i.id, i.model_version): i for i in items}  # a key twice in a batch: the last one wins
        if not latest:
            return []
        rows = [document_row(i) for i in latest.values()]
        stmt = self._insert(Document).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={c: stmt.excluded[c] for c in rows[0] if c not in _KEY},
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
            touched = await self._replace_keys(conn, list(latest.values()))
            aggregates = await self._recompute(conn, touched)
            await alerts.evaluate(
                conn, self._insert, subscriptions, latest.values(), aggregates, deliver_webhooks=deliver_webhooks
            )
        metrics.STORE_ROWS.inc(len(rows))
        return [WindowAggregate(**row) for row in aggregates]

    async def _replace_keys(self, conn: AsyncConnection, items: list[ScoredItem]) -> Touched:
        """Swap each document's key rows for its current ones; return every window either side touched."""
        ids = [(i.id, i.model_version) for i in items]
        old = await conn.execute(
            delete(DocumentKey)
            .where(tuple_(DocumentKey.doc_id, DocumentKey.model_version).in_(ids))
            .returning(DocumentKey.key_type, DocumentKey.key, DocumentKey.model_version, DocumentKey.event_ts)
        )
        new = [row for item in items for row in key_rows(item)]
        for start in range(0, len(new), 2000):  # PostgreSQL takes at most 32767 parameters a statement
            await conn.execute(self._insert(DocumentKey).values(new[start : start + 2000]))
        touched: Touched = {w: {} for w in self.windows}
        for key_type, key, version, event_ts in [*old, *((r["key_type"], r["key"], r["model_version"], r["event_ts"]) for r in new)]:
            for w in self.windows:
                touched[w].setdefault((key_type, key, version), set()).add(window_start(event_ts, w))
        return touched

    async def _recompute(self, conn: AsyncConnection, touched: Touched) -> list[dict[str, Any]]:
        keys = sorted({k for by_key in touched.values() for k in by_key})
        if conn.dialect.name == "postgresql":
            # Sorted, so two workers locking overlapping keys cannot deadlock.
            for lock_id in sorted({zlib.crc32("\x1f".join(k).encode()) for k in keys}):
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
        rows: list[dict[str, Any]] = []
        for w, by_key in touched.items():
            if by_key:
                rows += await self._recompute_windows(conn, w, by_key)
        return rows

    async def _recompute_windows(
        self, conn: AsyncConnection, w: int, by_key: dict[tuple[str, str, str], set[int]]
    ) -> list[dict[str, Any]]:
        starts = {s for ss in by_key.values() for s in ss}
        start_col = (DocumentKey.event_ts - DocumentKey.event_ts % w).label("start")
        label = DocumentKey.sentiment_label
        query = (
            select(
                DocumentKey.key_type,
                DocumentKey.key,
                DocumentKey.model_version,
                start_col,
                func.sum(case((label == "negative", 1), else_=0)),
                func.sum(case((label == "neutral", 1), else_=0)),
                func.sum(case((label == "positive", 1), else_=0)),
                func.count(),
                func.sum(DocumentKey.sentiment_score),
            )
            .where(tuple_(DocumentKey.key_type, DocumentKey.key, DocumentKey.model_version).in_(list(by_key)))
            .where(DocumentKey.event_ts >= min(starts), DocumentKey.event_ts < max(starts) + w)
            .group_by(DocumentKey.key_type, DocumentKey.key, DocumentKey.model_version, start_col)
        )
        found: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        for key_type, key, version, start, neg, neu, pos, volume, score_sum in await conn.execute(query):
            if int(start) in by_key[(key_type, key, version)]:
                found[(key_type, key, version, int(start))] = {
                    "window_s": w,
                    "window_start": as_datetime(int(start)),
                    "key_type": key_type,
                    "key": key,
                    "model_version": version,
                    "count_negative": int(neg),
                    "count_neutral": int(neu),
                    "count_positive": int(pos),
                    "volume": int(volume),
                    "score_sum": float(score_sum),
                    "mean_score": float(score_sum) / int(volume),
                }
        emptied = [
            (w, as_datetime(s), kt, k, v)
            for (kt, k, v), ss in by_key.items()
            for s in ss
            if (kt, k, v, s) not in found
        ]
        if emptied:  # every document of the window moved away (re-scored with other keys)
            cols = (Aggregate.window_s, Aggregate.window_start, Aggregate.key_type, Aggregate.key, Aggregate.model_version)
            await conn.execute(delete(Aggregate).where(tuple_(*cols).in_(emptied)))
        if found:
            rows = list(found.values())
            stmt = self._insert(Aggregate).values(rows)
            excluded = {c: stmt.excluded[c] for c in rows[0] if c not in _AGGREGATE_KEY}
            stmt = stmt.on_conflict_do_update(index_elements=list(_AGGREGATE_KEY), set_={**excluded, "updated_at": func.now()})
            await conn.execute(stmt)
        return list(found.values())

    async def close(self) -> None:
        await self.engine.dispose()


async def write_durably(
    store: DocumentStore,
    items: Sequence[ScoredItem],
    *,
    on_rejected: Callable[[ScoredItem, BaseException], Awaitable[None]],
    initial_s: float,
    max_s: float,
    subscriptions: Callable[[], Awaitable[Sequence[Subscription]]] | None = None,
    deliver_webhooks: bool = True,
) -> list[WindowAggregate]:
    """Return only once every item is stored or rejected: transient failures are retried forever.

    Kafka offsets of a batch are committed only after this returns, so an outage of
    the database holds the stream back instead of losing documents. A batch that the
    database refuses for its content is split until the bad rows are found and rejected.
    """
    delay = initial_s
    while True:
        try:
            watching = await subscriptions() if subscriptions else ()
            aggregates = await store.upsert(items, watching, deliver_webhooks=deliver_webhooks)
            metrics.STORE_UP.set(1)
            return aggregates
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
        return []
    middle = len(items) // 2
    aggregates: list[WindowAggregate] = []
    for half in (items[:middle], items[middle:]):
        aggregates += await write_durably(
            store,
            half,
            on_rejected=on_rejected,
            initial_s=initial_s,
            max_s=max_s,
            subscriptions=subscriptions,
            deliver_webhooks=deliver_webhooks,
        )
    return aggregates


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
