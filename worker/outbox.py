"""The alerts outbox: sends alerts stored by the persist stage to `<namespace>.alerts` and to webhooks.

An alert is first committed to SQL together with the window that fired it; only then
is it sent, from here. So a crash between the two never loses an alert (it is sent on
the next pass) and never fires it twice (the row exists once). Sending is at least once:
a crash after a send but before it is marked could send it again, with the same
`alert_id` on the topic and the same `Idempotency-Key` on the webhook, so consumers
can drop the copy. On PostgreSQL, rows are claimed with `FOR UPDATE SKIP LOCKED`, so
several workers share the work without sending one alert twice.

It uses its own idempotent Kafka producer rather than Faust's, so it works the same in
the worker, under Faust's exactly-once mode, and in `finpulse replay`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.tables import AlertRow, SubscriptionRow
from worker import metrics
from worker.alerts import alert_of
from worker.logfilter import Throttle
from worker.settings import Settings
from worker.topics import bootstrap_servers
from worker.webhooks import post_alert

log = logging.getLogger(__name__)
log.addFilter(Throttle(every_s=30))  # an outage fails every pass (twice a second): say so twice a minute


class AlertOutbox:
    def __init__(self, settings: Settings, *, engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_async_engine(settings.database_url, pool_pre_ping=True)
        self._owns_engine = engine is None
        self.topic = settings.topic("alerts")
        self._producer: AIOKafkaProducer | None = None
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Poll the outbox until cancelled; a failing store or broker only delays sending."""
        try:
            while True:
                try:
                    await self.publish_pending()
                    await self.deliver_due()
                except Exception as exc:  # noqa: BLE001 - outages are retried on the next pass
                    log.warning("alert outbox pass failed (%s: %s); retrying", type(exc).__name__, str(exc)[:200])
                await asyncio.sleep(self.settings.outbox_interval_s)
        finally:
            await asyncio.shield(self.close())

    def _claim(self, query: Select[Any]) -> Select[Any]:
        if self.engine.dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True, of=AlertRow)
        return query

    async def publish_pending(self, limit: int = 500) -> int:
        """Send unpublished alerts to the alerts topic, oldest first; mark them once the broker acknowledged."""
        producer = await self._kafka()
        async with self.engine.begin() as conn:
            query = select(AlertRow).where(AlertRow.published.is_(False)).order_by(AlertRow.fired_at).limit(limit)
            rows = (await conn.execute(self._claim(query))).all()
            for row in rows:
                alert = alert_of(row)
                await producer.send_and_wait(self.topic, alert.model_dump_json().encode(), key=alert.alert_id.encode())
            if rows:
                ids = [row.alert_id for row in rows]
                await conn.execute(update(AlertRow).where(AlertRow.alert_id.in_(ids)).values(published=True))
        metrics.ALERTS_PUBLISHED.inc(len(rows))
        return len(rows)

    async def deliver_due(self, limit: int = 20) -> int:
        """POST due webhooks concurrently; each failure is rescheduled with back-off, up to the attempt limit."""
        now = datetime.now(UTC)
        query = (
            select(AlertRow.__table__, SubscriptionRow.webhook_url, SubscriptionRow.webhook_secret)
            .outerjoin(SubscriptionRow, SubscriptionRow.id == AlertRow.subscription_id)
            .where(AlertRow.delivery == "pending", AlertRow.next_attempt_at <= now)
            .order_by(AlertRow.next_attempt_at)
            .limit(limit)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(self._claim(query))).all()
            outcomes = await asyncio.gather(*(self._deliver_one(row) for row in rows))
            for values, row in zip(outcomes, rows):
                await conn.execute(update(AlertRow).where(AlertRow.alert_id == row.alert_id).values(**values))
        return len(rows)

    async def _deliver_one(self, row: Any) -> dict[str, Any]:
        if not row.webhook_url or not row.webhook_secret:
            return {"delivery": "failed", "last_error": "the subscription or its webhook was removed"}
        body = alert_of(row).model_dump_json().encode()
        result = await post_alert(
            await self._http(),
            row.webhook_url,
            row.webhook_secret,
            row.alert_id,
            body,
            allow_private=self.settings.webhook_allow_private,
        )
        attempts = row.delivery_attempts + 1
        now = datetime.now(UTC)
        if result.ok:
            metrics.WEBHOOK_POSTS.labels("delivered").inc()
            return {"delivery": "delivered", "delivery_attempts": attempts, "delivered_at": now, "last_error": None}
        if not result.retry or attempts >= self.settings.webhook_max_attempts:
            metrics.WEBHOOK_POSTS.labels("failed").inc()
            log.warning("webhook for alert %s failed for good after %d attempts: %s", row.alert_id, attempts, result.detail)
            return {"delivery": "failed", "delivery_attempts": attempts, "last_error": result.detail}
        metrics.WEBHOOK_POSTS.labels("retry").inc()
        backoff = min(self.settings.webhook_retry_initial_s * 2 ** (attempts - 1), self.settings.webhook_retry_max_s)
        return {
            "delivery_attempts": attempts,
            "next_attempt_at": now + timedelta(seconds=backoff),
            "last_error": result.detail,
        }

    async def _kafka(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(self.settings.kafka_url), acks="all", enable_idempotence=True
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.webhook_timeout_s)
        return self._client

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._owns_engine:
            await self.engine.dispose()
