"""Windowed aggregates in SQL, recomputed from the stored documents' keys.

Every window a batch touches is recomputed in the batch's transaction, so aggregates
always equal a recomputation from the documents, whatever was redelivered, replayed,
late or re-scored. On PostgreSQL an advisory lock per key serialises workers that touch
the same key at once; rules are judged under the same locks (worker/stages/persist.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.aggregates import WindowAggregate
from schemas.tables import Aggregate, DocumentKey
from worker.stages.aggregates import as_datetime, epoch_seconds
from worker.store.database import Insert
from worker.store.documents import Touched

_AGGREGATE_KEY = ("window_s", "window_start", "key_type", "key", "model_version")
SeriesKey = tuple[int, str, str, str]  # window_s, key_type, key, model_version
# One series' window starts (epoch s) -> (volume, count_negative), for spike baselines.
Baselines = dict[SeriesKey, dict[int, tuple[int, int]]]

# Every lock in one round trip: unnest hands the (sorted) ids out in array order, so they are taken in that order.
_LOCK = text("SELECT pg_advisory_xact_lock(id) FROM unnest(:ids) AS id").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger))
)


@cache
def _upsert(insert: Insert) -> Any:
    """Built once per dialect and executed with a list of rows, so its compiled form is reused."""
    stmt = insert(Aggregate)
    overwrite = {c.name: stmt.excluded[c.name] for c in Aggregate.__table__.c if c.name not in (*_AGGREGATE_KEY, "updated_at")}
    return stmt.on_conflict_do_update(index_elements=list(_AGGREGATE_KEY), set_={**overwrite, "updated_at": func.now()})


class AggregateRepository:
    def __init__(self, conn: AsyncConnection, insert: Insert) -> None:
        self.conn = conn
        self._upsert = _upsert(insert)

    async def lock(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Serialise workers on these (key_type, key, model_version) until the transaction ends (PostgreSQL)."""
        if self.conn.dialect.name != "postgresql":
            return  # SQLite has one writer at a time anyway
        # Sorted, so two workers locking overlapping keys cannot deadlock.
        lock_ids = sorted({zlib.crc32("\x1f".join(k).encode()) for k in keys})
        if lock_ids:
            await self.conn.execute(_LOCK, {"ids": lock_ids})

    async def recompute(self, touched: Touched) -> list[dict[str, Any]]:
        """Rewrite every touched window from the document keys; returns the windows that still hold documents."""
        rows: list[dict[str, Any]] = []
        for w, by_key in touched.items():
            if by_key:
                rows += await self._recompute_windows(w, by_key)
        return rows

    async def _recompute_windows(self, w: int, by_key: dict[tuple[str, str, str], set[int]]) -> list[dict[str, Any]]:
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
        for key_type, key, version, start, neg, neu, pos, volume, score_sum in await self.conn.execute(query):
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
            (w, as_datetime(s), kt, k, v) for (kt, k, v), ss in by_key.items() for s in ss if (kt, k, v, s) not in found
        ]
        if emptied:  # every document of the window moved away (re-scored with other keys)
            cols = (Aggregate.window_s, Aggregate.window_start, Aggregate.key_type, Aggregate.key, Aggregate.model_version)
            await self.conn.execute(delete(Aggregate).where(tuple_(*cols).in_(emptied)))
        if found:
            await self.conn.execute(self._upsert, list(found.values()))
        return list(found.values())

    async def baselines(self, ranges: dict[SeriesKey, tuple[int, int]]) -> Baselines:
        """Stored windows of each series within [first, end) epoch s, in one query (spike rules' history)."""
        if not ranges:
            return {}
        first = min(lo for lo, _ in ranges.values())
        end = max(hi for _, hi in ranges.values())
        query = select(
            Aggregate.window_s, Aggregate.key_type, Aggregate.key, Aggregate.model_version,
            Aggregate.window_start, Aggregate.volume, Aggregate.count_negative,
        ).where(
            tuple_(Aggregate.window_s, Aggregate.key_type, Aggregate.key, Aggregate.model_version).in_(list(ranges)),
            Aggregate.window_start >= as_datetime(first),
            Aggregate.window_start < as_datetime(end),
        )
        found: Baselines = {series: {} for series in ranges}
        for window_s, key_type, key, version, start, volume, negative in await self.conn.execute(query):
            series = (window_s, key_type, key, version)
            lo, hi = ranges[series]
            start_s = epoch_seconds(start)
            if lo <= start_s < hi:
                found[series][start_s] = (int(volume), int(negative))
        return found

    async def series(
        self,
        *,
        key_type: str,
        key: str,
        window_s: int,
        since: datetime | None = None,
        until: datetime | None = None,
        model_version: str | None = None,
        limit: int = 1000,
    ) -> list[WindowAggregate]:
        """One key's windows, oldest first: the latest `limit` in the range, one per model version (the API)."""
        table = Aggregate.__table__
        query = select(table).where(table.c.key_type == key_type, table.c.key == key, table.c.window_s == window_s)
        if since is not None:
            query = query.where(table.c.window_start >= since)
        if until is not None:
            query = query.where(table.c.window_start < until)
        if model_version is not None:
            query = query.where(table.c.model_version == model_version)
        query = query.order_by(table.c.window_start.desc(), table.c.model_version.desc()).limit(limit)
        rows = (await self.conn.execute(query)).all()
        return [WindowAggregate.model_validate(dict(row._mapping)) for row in reversed(rows)]
