"""Fired alerts in SQL: the persist step adds them, the outbox sends them, the API lists them.

An alert's id is a hash of (subscription, key, window): the primary key makes a
redelivered batch, a restart or a replay add nothing. On PostgreSQL the outbox claims
rows with `FOR UPDATE SKIP LOCKED`, so several workers share the sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Select, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.alerts import Alert
from schemas.tables import AlertRow, SubscriptionRow
from worker.stages.aggregates import as_utc
from worker.store.database import Insert

# (subscription_id, key_type, key) -> [(window_start, alert_id)] of alerts already stored.
Recent = dict[tuple[str, str, str], list[tuple[datetime, str]]]


@cache
def _add(insert: Insert) -> Any:
    """Built once per dialect, so its compiled form is reused."""
    return insert(AlertRow).on_conflict_do_nothing()


def alert_of(row: Any) -> Alert:
    """An alerts-table row as the message the topic and webhooks carry."""
    return Alert.model_validate({field: getattr(row, field) for field in Alert.model_fields})


class AlertRepository:
    def __init__(self, conn: AsyncConnection, insert: Insert) -> None:
        self.conn = conn
        self._add = _add(insert)

    async def near(self, wanted: Sequence[tuple[str, str, str, datetime, int]]) -> Recent:
        """Stored alerts of each (subscription, key_type, key) within ±cooldown of a window start, in one query."""
        if not wanted:
            return {}
        ranges: dict[tuple[str, str, str], tuple[datetime, datetime]] = {}
        for subscription_id, key_type, key, start, cooldown_s in wanted:
            lo, hi = start - timedelta(seconds=cooldown_s), start + timedelta(seconds=cooldown_s)
            old = ranges.get((subscription_id, key_type, key))
            ranges[(subscription_id, key_type, key)] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
        # One shape whatever the number of keys (an expanding IN and the widest range, narrowed here), so its
        # compiled form is reused: an OR of one clause per key is compiled anew for every batch.
        query = select(AlertRow.subscription_id, AlertRow.key_type, AlertRow.key, AlertRow.window_start, AlertRow.alert_id)
        query = query.where(
            tuple_(AlertRow.subscription_id, AlertRow.key_type, AlertRow.key).in_(list(ranges)),
            AlertRow.window_start > min(lo for lo, _ in ranges.values()),
            AlertRow.window_start < max(hi for _, hi in ranges.values()),
        )
        recent: Recent = {}
        for sub, kt, k, start, alert_id in await self.conn.execute(query):
            lo, hi = ranges[(sub, kt, k)]
            if lo < as_utc(start) < hi:
                recent.setdefault((sub, kt, k), []).append((as_utc(start), alert_id))
        return recent

    async def add(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store alerts not stored before; returns those that were new."""
        added = []
        for row in rows:
            result = await self.conn.execute(self._add, row)
            if result.rowcount:
                added.append(row)
        return added

    async def list(
        self,
        *,
        subscription_id: str | None = None,
        key_type: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Fired alerts, newest first (the API)."""
        table = AlertRow.__table__
        query = select(table)
        if subscription_id is not None:
            query = query.where(table.c.subscription_id == subscription_id)
        if key_type is not None:
            query = query.where(table.c.key_type == key_type)
        if key is not None:
            query = query.where(table.c.key == key)
        if since is not None:
            query = query.where(table.c.fired_at >= since)
        query = query.order_by(table.c.fired_at.desc(), table.c.alert_id).limit(limit)
        return [Alert.model_validate(dict(row._mapping)) for row in (await self.conn.execute(query)).all()]

    def _claim(self, query: Select[Any]) -> Select[Any]:
        if self.conn.dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True, of=AlertRow)
        return query

    async def claim_unpublished(self, limit: int) -> list[Any]:
        """Alerts not yet on the alerts topic, oldest first, locked for this transaction."""
        query = select(AlertRow).where(AlertRow.published.is_(False)).order_by(AlertRow.fired_at).limit(limit)
        return list((await self.conn.execute(self._claim(query))).all())

    async def mark_published(self, alert_ids: Sequence[str]) -> None:
        if alert_ids:
            await self.conn.execute(update(AlertRow).where(AlertRow.alert_id.in_(alert_ids)).values(published=True))

    async def claim_due_webhooks(self, now: datetime, limit: int) -> list[Any]:
        """Alerts whose webhook POST is due, with the subscription's URL and secret, locked for this transaction."""
        query = (
            select(AlertRow.__table__, SubscriptionRow.webhook_url, SubscriptionRow.webhook_secret)
            .outerjoin(SubscriptionRow, SubscriptionRow.id == AlertRow.subscription_id)
            .where(AlertRow.delivery == "pending", AlertRow.next_attempt_at <= now)
            .order_by(AlertRow.next_attempt_at)
            .limit(limit)
        )
        return list((await self.conn.execute(self._claim(query))).all())

    async def record_delivery(self, alert_id: str, values: dict[str, Any]) -> None:
        await self.conn.execute(update(AlertRow).where(AlertRow.alert_id == alert_id).values(**values))
