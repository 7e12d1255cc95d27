"""The reads behind `finpulse report`: one period of one model version, summed in SQL where it can be.

Time series come from `document_keys` (event time as epoch seconds), grouped into buckets of
any size with integer arithmetic that PostgreSQL and SQLite share, so a report of ten minutes
and one of a month both get a readable number of points whatever windows the worker keeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.tables import AlertRow, Document, DocumentKey, ModelVersionRow, SubscriptionRow
from worker.stages.aggregates import GLOBAL, as_datetime
from worker.store.database import make_engine


@dataclass(frozen=True)
class Period:
    """[start_ts, end_ts) in event time (epoch seconds), for one model version."""

    start_ts: int
    end_ts: int
    model_version: str


@dataclass(frozen=True)
class BucketCount:
    """Documents of one key and one sentiment label in the bucket starting at `bucket_ts`."""

    key: str
    bucket_ts: int
    label: str
    count: int
    score_sum: float


class ReportRepository:
    """Read-only queries over documents, document_keys, subscriptions and alerts."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    def _keys_in(self, period: Period, key_type: str) -> Any:
        return and_(
            DocumentKey.key_type == key_type,
            DocumentKey.model_version == period.model_version,
            DocumentKey.event_ts >= period.start_ts,
            DocumentKey.event_ts < period.end_ts,
        )

    async def model_versions(self, start_ts: int, end_ts: int) -> list[tuple[str, int]]:
        """Model versions with documents in [start_ts, end_ts): the live one first (`finpulse promote`; a shadow
        replay may hold as many documents), then most documents first."""
        count = func.count()
        live = select(ModelVersionRow.model_version).where(ModelVersionRow.role == "live").scalar_subquery()
        query = (
            select(DocumentKey.model_version, count)
            .where(DocumentKey.key_type == GLOBAL[0], DocumentKey.key == GLOBAL[1])
            .where(DocumentKey.event_ts >= start_ts, DocumentKey.event_ts < end_ts)
            .group_by(DocumentKey.model_version)
            .order_by(case((DocumentKey.model_version == live, 0), else_=1), count.desc(), DocumentKey.model_version)
        )
        return [(row[0], int(row[1])) for row in await self.conn.execute(query)]

    async def stored_range(self) -> tuple[datetime, datetime, int] | None:
        """The first and last event time in the whole store, and its document count; None when it is empty."""
        row = (await self.conn.execute(select(func.min(DocumentKey.event_ts), func.max(DocumentKey.event_ts), func.count())
                                       .where(DocumentKey.key_type == GLOBAL[0]))).one()
        return None if not row[2] else (as_datetime(int(row[0])), as_datetime(int(row[1])), int(row[2]))

    async def span(self, period: Period) -> tuple[int, int, int]:
        """First and last event time (epoch s) of the period's documents, and how many there are."""
        row = (await self.conn.execute(
            select(func.min(DocumentKey.event_ts), func.max(DocumentKey.event_ts), func.count()).where(self._keys_in(period, "global"))
        )).one()
        return (int(row[0]), int(row[1]), int(row[2])) if row[2] else (period.start_ts, period.start_ts, 0)

    async def subscribed_keys(self, key_type: str) -> list[str]:
        """Keys that enabled subscriptions name explicitly (not `*`)."""
        query = (
            select(SubscriptionRow.key).distinct()
            .where(SubscriptionRow.key_type == key_type, SubscriptionRow.key != "*", SubscriptionRow.enabled.is_(True))
            .order_by(SubscriptionRow.key)
        )
        return [row[0] for row in await self.conn.execute(query)]

    async def top_keys(self, period: Period, key_type: str, limit: int) -> list[tuple[str, int]]:
        """The keys of a type with the most documents in the period."""
        count = func.count()
        query = (
            select(DocumentKey.key, count).where(self._keys_in(period, key_type))
            .group_by(DocumentKey.key).order_by(count.desc(), DocumentKey.key).limit(limit)
        )
        return [(row[0], int(row[1])) for row in await self.conn.execute(query)]

    async def buckets(
        self, period: Period, key_type: str, bucket_s: int, keys: Sequence[str] | None = None
    ) -> list[BucketCount]:
        """Documents and score sums per key, bucket and label; only `keys` when given."""
        bucket = (DocumentKey.event_ts - DocumentKey.event_ts % bucket_s).label("bucket")
        query = select(DocumentKey.key, bucket, DocumentKey.sentiment_label, func.count(), func.sum(DocumentKey.sentiment_score))
        query = query.where(self._keys_in(period, key_type))
        if keys is not None:
            query = query.where(DocumentKey.key.in_(list(keys)))
        query = query.group_by(DocumentKey.key, bucket, DocumentKey.sentiment_label).order_by(DocumentKey.key, bucket)
        return [BucketCount(row[0], int(row[1]), row[2], int(row[3]), float(row[4] or 0.0)) for row in await self.conn.execute(query)]

    async def label_counts(self, period: Period, key_type: str) -> list[tuple[str, str, int]]:
        """(key, sentiment label, documents) over the whole period, for a type such as topic."""
        query = (
            select(DocumentKey.key, DocumentKey.sentiment_label, func.count()).where(self._keys_in(period, key_type))
            .group_by(DocumentKey.key, DocumentKey.sentiment_label)
        )
        return [(row[0], row[1], int(row[2])) for row in await self.conn.execute(query)]

    async def alerts(self, period: Period) -> list[dict[str, Any]]:
        """Alerts of the model version whose window overlaps the period, in window order."""
        query = (
            select(AlertRow.__table__)
            .where(AlertRow.model_version == period.model_version)
            .where(AlertRow.window_end > as_datetime(period.start_ts), AlertRow.window_start < as_datetime(period.end_ts))
            .order_by(AlertRow.window_start, AlertRow.key_type, AlertRow.key, AlertRow.alert_id)
        )
        return [dict(row._mapping) for row in await self.conn.execute(query)]

    def _documents_in(self, period: Period) -> Any:
        return and_(
            Document.model_version == period.model_version,
            Document.event_time >= as_datetime(period.start_ts),
            Document.event_time < as_datetime(period.end_ts),
        )

    async def most_negative(self, period: Period, limit: int) -> list[dict[str, Any]]:
        """The documents labelled negative with the lowest sentiment score (P(positive) - P(negative))."""
        columns = (Document.doc_id, Document.event_time, Document.lang, Document.source, Document.url, Document.text,
                   Document.entities, Document.topic_label, Document.sentiment_score, Document.sentiment_probs)
        query = (
            select(*columns).where(self._documents_in(period), Document.sentiment_label == "negative")
            .order_by(Document.sentiment_score, Document.doc_id).limit(limit)
        )
        return [dict(row._mapping) for row in await self.conn.execute(query)]

    async def timings(self, period: Period, limit: int) -> list[tuple[datetime, datetime, datetime]]:
        """(event_time, scored_at, stored_at) of up to `limit` documents, in the order they were stored."""
        query = (
            select(Document.event_time, Document.scored_at, Document.stored_at).where(self._documents_in(period))
            .order_by(Document.stored_at, Document.doc_id).limit(limit)
        )
        return [(row[0], row[1], row[2]) for row in await self.conn.execute(query)]


@asynccontextmanager
async def open_reports(database_url: str) -> AsyncIterator[ReportRepository]:
    """A repository on one connection of a short-lived engine (no write transaction)."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            yield ReportRepository(conn)
    finally:
        await engine.dispose()
