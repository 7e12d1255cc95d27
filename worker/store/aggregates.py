"""Windowed aggregates in SQL, kept equal to the stored documents' keys by exact increments.

A batch's transaction swaps its documents' key rows (worker/store/documents.py), and what that
changed in each window (the new rows counted in, the old ones counted out) is added to the
window's row in one upsert, `count = count + delta`. So a redelivered or replayed document
changes nothing, a re-scored one moves its counts, a late one lands in its own window, and the
aggregates stay equal to a recomputation from the documents, at a cost that depends on the batch
alone: recomputing the touched windows from `document_keys` instead cost more as each window
filled (the hour's global window rescanned every document of the hour, docs/scaling.md).
On PostgreSQL an advisory lock per key serialises workers that touch the same key at once;
rules are judged under the same locks (worker/stages/persist.py).
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
from schemas.tables import Aggregate
from worker.stages.aggregates import as_datetime, epoch_seconds
from worker.store.database import Insert
from worker.store.documents import Deltas

_AGGREGATE_KEY = ("window_s", "window_start", "key_type", "key", "model_version")
SeriesKey = tuple[int, str, str, str]  # window_s, key_type, key, model_version
# One series' window starts (epoch s) -> (volume, count_negative), for spike baselines.
Baselines = dict[SeriesKey, dict[int, tuple[int, int]]]

# Every lock in one round trip: unnest hands the (sorted) ids out in array order, so they are taken in that order.
_LOCK = text("SELECT pg_advisory_xact_lock(id) FROM unnest(:ids) AS id").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger))
)


_SUMS = ("count_negative", "count_neutral", "count_positive", "volume", "score_sum")


@cache
def _add(insert: Insert) -> Any:
    """Adds each row's deltas to its window (a new window starts from them) and returns the window as it now is;
    built once per dialect and executed with a list of rows, so its compiled form is reused."""
    stmt = insert(Aggregate)
    table = Aggregate.__table__.c
    summed = {name: table[name] + stmt.excluded[name] for name in _SUMS}
    mean = case((summed["volume"] > 0, summed["score_sum"] / summed["volume"]), else_=0.0)
    return stmt.on_conflict_do_update(
        index_elements=list(_AGGREGATE_KEY), set_={**summed, "mean_score": mean, "updated_at": func.now()}
    ).returning(*(table[name] for name in (*_AGGREGATE_KEY, *_SUMS, "mean_score")))


class AggregateRepository:
    def __init__(self, conn: AsyncConnection, insert: Insert) -> None:
        self.conn = conn
        self._add = _add(insert)

    async def lock(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Serialise workers on these (key_type, key, model_version) until the transaction ends (PostgreSQL)."""
        if self.conn.dialect.name != "postgresql":
            return  # SQLite has one writer at a time anyway
        # Sorted, so two workers locking overlapping keys cannot deadlock.
        lock_ids = sorted({zlib.crc32("\x1f".join(k).encode()) for k in keys})
        if lock_ids:
            await self.conn.execute(_LOCK, {"ids": lock_ids})

    async def add(self, deltas: Deltas) -> list[dict[str, Any]]:
        """Add a batch's deltas to their windows; returns every changed window that still holds documents."""
        rows = []
        for (w, start, key_type, key, version), (neg, neu, pos, volume, score_sum) in deltas.items():
            # A redelivery cancels out: nothing to write (nor to judge again). A score can change alone (same label).
            if neg or neu or pos or volume or abs(score_sum) > 1e-9:
                rows.append({
                    "window_s": w, "window_start": as_datetime(start), "key_type": key_type, "key": key,
                    "model_version": version, "count_negative": neg, "count_neutral": neu, "count_positive": pos,
                    "volume": volume, "score_sum": score_sum, "mean_score": score_sum / volume if volume > 0 else 0.0,
                })
        if not rows:
            return []
        windows = [dict(row._mapping) for row in await self.conn.execute(self._add, rows)]
        emptied = [tuple(w[c] for c in _AGGREGATE_KEY) for w in windows if w["volume"] <= 0]
        if emptied:  # every document of the window moved away (re-scored with other keys)
            cols = (Aggregate.window_s, Aggregate.window_start, Aggregate.key_type, Aggregate.key, Aggregate.model_version)
            await self.conn.execute(delete(Aggregate).where(tuple_(*cols).in_(emptied)))
        return [_normalised(w) for w in windows if w["volume"] > 0]

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


def _normalised(window: dict[str, Any]) -> dict[str, Any]:
    """A returned row as the rules and the aggregates topic take it: UTC start, exact counts (SQLite returns
    naive datetimes)."""
    start = window["window_start"]
    return {**window, "window_start": as_datetime(epoch_seconds(start)),
            **{name: int(window[name]) for name in _SUMS if name != "score_sum"}}
