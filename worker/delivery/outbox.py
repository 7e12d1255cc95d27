"""The alerts outbox: sends alerts stored by the persist stage to `<namespace>.alerts` and to webhooks.

An alert is first committed to SQL together with the window that fired it; only then
is it sent, from here. So a crash between the two never loses an alert (it is sent on
the next pass) and never fires it twice (the row exists once). Sending is at least once:
a crash after a send but before it is marked could send it again, with the same
`alert_id` on the topic and the same `Idempotency-Key` on the webhook, so consumers
can drop the copy. On PostgreSQL, rows are claimed with `FOR UPDATE SKIP LOCKED`, so
several workers share the work without sending one alert twice.

Webhook secrets are stored encrypted; the outbox decrypts each one to sign with it
(`FINPULSE_SECRET_KEYS`). A secret no configured key opens is retried like an outage,
since the fix is a setting, and fails for good after the usual number of attempts.

It uses its own idempotent Kafka producer rather than Faust's, so it works the same in
the worker, under Faust's exactly-once mode, and in `finpulse replay`; its caller hands it
the brokers' security options (worker/kafka_security.py).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from worker import metrics
from worker.backoff import Backoff
from worker.delivery.webhooks import DeliveryResult, post_alert
from worker.logfilter import Throttle
from worker.security.secret_box import SecretBox, SecretUnreadable
from worker.settings import WebhookSettings
from worker.store.alerts import alert_of
from worker.store.unit_of_work import unit_of_work
from worker.topics import bootstrap_servers

log = logging.getLogger(__name__)
log.addFilter(Throttle(every_s=30))  # an outage fails every pass (twice a second): say so twice a minute


class AlertOutbox:
    """Sends stored alerts; the caller owns the SQL engine."""

    def __init__(
        self, database: AsyncEngine, settings: WebhookSettings, *, kafka_url: str, topic: str,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.kafka_url = kafka_url
        self.kafka_options = kafka_options or {}  # client_options(settings.kafka): TLS, SASL
        self.topic = topic
        self.backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self.box = SecretBox(settings.secret_keys or [])
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

    async def publish_pending(self, limit: int = 500) -> int:
        """Send unpublished alerts to the alerts topic, oldest first; mark them once the broker acknowledged."""
        producer = await self._kafka()
        async with unit_of_work(self.database) as uow:
            rows = await uow.alerts.claim_unpublished(limit)
            for row in rows:
                alert = alert_of(row)
                await producer.send_and_wait(self.topic, alert.model_dump_json().encode(), key=alert.alert_id.encode())
            await uow.alerts.mark_published([row.alert_id for row in rows])
        metrics.ALERTS_PUBLISHED.inc(len(rows))
        return len(rows)

    async def deliver_due(self, limit: int = 20) -> int:
        """POST due webhooks concurrently; each failure is rescheduled with back-off, up to the attempt limit."""
        async with unit_of_work(self.database) as uow:
            rows = await uow.alerts.claim_due_webhooks(datetime.now(UTC), limit)
            outcomes = await asyncio.gather(*(self._deliver_one(row) for row in rows))
            for values, row in zip(outcomes, rows):
                await uow.alerts.record_delivery(row.alert_id, values)
        return len(rows)
    async def _deliver_one(self, row: Any) -> dict[str, Any]:
        if not row.webhook_url or not row.webhook_secret:
            return {"delivery": "failed", "last_error": "the subscription or its webhook was removed"}
        body = alert_of(row).model_dump_json().encode()
        try:
            secret = self.box.open(row.webhook_secret)
        except SecretUnreadable as exc:
            result = DeliveryResult(False, True, str(exc))
        else:
            result = await post_alert(await self._http(), row.webhook_url, secret, row.alert_id, body, self.settings)
        attempts = row.delivery_attempts + 1
        now = datetime.now(UTC)
        if result.ok:
            metrics.WEBHOOK_POSTS.labels("delivered").inc()
            return {"delivery": "delivered", "delivery_attempts": attempts, "delivered_at": now, "last_error": None}
        if not result.retry or attempts >= self.settings.max_attempts:
            metrics.WEBHOOK_POSTS.labels("failed").inc()
            log.warning("webhook for alert %s failed for good after %d attempts: %s", row.alert_id, attempts, result.detail)
            return {"delivery": "failed", "delivery_attempts": attempts, "last_error": result.detail}
        metrics.WEBHOOK_POSTS.labels("retry").inc()
        backoff = self.backoff.delay(attempts - 1)
        return {
            "delivery_attempts": attempts,
            "next_attempt_at": now + timedelta(seconds=backoff),
            "last_error": result.detail,
        }

    async def _kafka(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(self.kafka_url), acks="all", enable_idempotence=True,
                **self.kafka_options,
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.timeout_s)
        return self._client

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
