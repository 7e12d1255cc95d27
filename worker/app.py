"""The Faust app: wires the topics to the stages. The stages' logic lives in plain modules.

    <ns>.docs ──[score]──► <ns>.scored ──[persist]──► SQL documents, keys, aggregates, alerts
                  │ bad input                │ rows the database refuses     │          │
                  └────────► <ns>.dlq ◄──────┘            <ns>.aggregates ◄──┘  [outbox]──► <ns>.alerts, webhooks

Offsets: each batch's events are held (an extra reference on the Kafka message) until
its outputs are sent or written, so Faust never commits past unfinished work, even if
the batch is interrupted by shutdown or a rebalance (faust's `take()` acks in a
`finally`). A batch never raises: failures are retried inside it or sent to the DLQ.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from engines import Engine
from schemas.news import DeadLetter, NewsItem, ScoredItem
from worker import metrics
from worker.ingest import Rejection, decode_news_item
from worker.outbox import AlertOutbox
from worker.scoring import EngineFailed, Scorer, build_scorer
from worker.settings import Settings
from worker.store import DocumentStore, write_durably
from worker.subscriptions import LiveSubscriptions, SubscriptionRepository

log = logging.getLogger(__name__)


def hold(events: Sequence[EventT]) -> None:
    """Keep these offsets uncommitted until `release`, whatever happens to the batch."""
    for event in events:
        event.message.incref()


def release(events: Sequence[EventT]) -> None:
    for event in events:
        event.ack()


def dead_letter(event: EventT, *, reason: str, detail: str, stage: str) -> DeadLetter:
    message = event.message
    return DeadLetter(
        reason=reason,
        detail=detail,
        stage=stage,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        key_b64=base64.b64encode(message.key).decode() if message.key else None,
        value_b64=base64.b64encode(message.value or b"").decode(),
        rejected_at=datetime.now(UTC),
    )


def create_app(settings: Settings, engine: Engine) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        store="memory://",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        producer_acks=-1,
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=1.0,
        # Faust's defaults (60 s) leave a dead worker's partitions idle for a minute;
        # the model runs in a thread, so the event loop heart-beats in time at 20 s.
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
    )
    docs = app.topic(settings.topic("docs"), key_type=bytes, value_type=bytes)
    scored = app.topic(settings.topic("scored"), key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.topic("dlq"), key_type=bytes, value_type=bytes)
    aggregates = app.topic(settings.topic("aggregates"), key_type=bytes, value_type=bytes)

    async def send_dead_letter(letter: DeadLetter, key: bytes | None) -> None:
        metrics.DLQ.labels(letter.stage, letter.reason).inc()
        await dlq.send(key=key, value=letter.model_dump_json().encode())

    @app.agent(docs, concurrency=1)
    async def score(stream: faust.StreamT[bytes]) -> None:
        """Validate each document, score the batch, emit ScoredItems (or dead letters)."""
        scorer = build_scorer(settings, engine)
        await scorer.warm_up()
        try:
            async for events in stream.take_events(settings.batch_max, within=settings.batch_wait_ms / 1000):
                hold(events)
                await _score_batch(scorer, events)
                release(events)
        finally:
            await asyncio.shield(scorer.close())

    async def _score_batch(scorer: Scorer, events: Sequence[EventT]) -> None:
        metrics.DOCS_IN.inc(len(events))
        valid: list[tuple[EventT, NewsItem]] = []
        for event in events:
            decoded = decode_news_item(event.value, max_text_chars=settings.max_text_chars)
            if isinstance(decoded, Rejection):
                letter = dead_letter(event, reason=decoded.reason, detail=decoded.detail, stage="ingest")
                await send_dead_letter(letter, event.key)
            else:
                valid.append((event, decoded))
        if not valid:
            return
        arrived = [datetime.fromtimestamp(event.message.timestamp, UTC) for event, _ in valid]
        results = await scorer.score([item for _, item in valid], arrived)
        for (event, item), result in zip(valid, results):
            if isinstance(result, EngineFailed):
                letter = dead_letter(event, reason="engine_error", detail=str(result), stage="score")
                await send_dead_letter(letter, event.key)
            else:
                await scored.send(key=result.id.encode(), value=result.model_dump_json().encode())

    @app.agent(scored, concurrency=1)
    async def persist(stream: faust.StreamT[bytes]) -> None:
        """Upsert ScoredItems into SQL; hold offsets until the rows are durable."""
        store = DocumentStore(settings.database_url, settings.window_sizes)
        subscriptions = LiveSubscriptions(SubscriptionRepository(store.engine), settings.subscriptions_refresh_s)
        try:
            async for events in stream.take_events(
                settings.persist_batch_max, within=settings.persist_batch_wait_ms / 1000
            ):
                hold(events)
                await _persist_batch(store, subscriptions, events)
                release(events)
        finally:
            await asyncio.shield(store.close())

    async def _persist_batch(store: DocumentStore, subscriptions: LiveSubscriptions, events: Sequence[EventT]) -> None:
        items: list[ScoredItem] = []
        event_of: dict[int, EventT] = {}
        for event in events:
            try:
                item = ScoredItem.model_validate_json(event.value or b"")
            except ValidationError as exc:
                letter = dead_letter(event, reason="invalid_scored_item", detail=str(exc)[:500], stage="persist")
                await send_dead_letter(letter, event.key)
                continue
            items.append(item)
            event_of[id(item)] = event

        async def reject(item: ScoredItem, exc: BaseException) -> None:
            letter = dead_letter(event_of[id(item)], reason="store_rejected", detail=str(exc)[:500], stage="persist")
            await send_dead_letter(letter, event_of[id(item)].key)

        updated = await write_durably(
            store,
            items,
            on_rejected=reject,
            initial_s=settings.store_retry_initial_s,
            max_s=settings.store_retry_max_s,
            subscriptions=subscriptions.current,
        )
        for aggregate in updated:
            await aggregates.send(key=aggregate.message_key, value=aggregate.model_dump_json().encode())

    @app.task
    async def send_alerts() -> None:
        """Publish stored alerts to <ns>.alerts and POST their webhooks (worker/outbox.py)."""
        await AlertOutbox(settings).run()

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "model_version": engine.model_version, "backend": engine.backend})

    return app
