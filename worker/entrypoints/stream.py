"""The Faust worker: two agents drive the stages between the topics.

    <ns>.docs ──[score agent: decode, score]──► <ns>.scored ──[persist agent: persist]──► SQL
                  │ rejects                                     │ rejects    │ windows        [outbox task]
                  └──────────► <ns>.dlq ◄───────────────────────┘            ▼                    │
                                                                     <ns>.aggregates   <ns>.alerts, webhooks ◄┘

Offsets: the agents read with Faust's `noack_take`, which leaves acking to us, and ack
a batch's events only after its outputs are sent or written. So Faust never commits
past unfinished work, even if a batch is interrupted by shutdown or a rebalance (plain
`take()` acks in a `finally`). The score agent works on up to FINPULSE_SCORE_IN_FLIGHT
batches at once, so the model always has the next one queued, and finishes them in the
order it took them (worker/entrypoints/in_order.py). A batch never raises: failures are retried inside the
stages or come back as rejects, which go to the DLQ. A part that is stuck retrying says so
on `/health` (worker/health.py); a batch the consumer cannot decode pauses only its
partition (worker/entrypoints/guarded_app.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.types import EventT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engines import Engine
from worker import metrics
from worker.backoff import Backoff
from worker.delivery.outbox import AlertOutbox
from worker.entrypoints.consumer_lag import LagReporter
from worker.entrypoints.guarded_app import GuardedApp
from worker.entrypoints.in_order import InOrder
from worker.entrypoints.live_model import LiveModel
from worker.kafka_security import client_options, faust_credentials
from worker.logs import record_fields, stage_context
from worker.settings import Settings
from worker.stages.decode import decode, decode_scored
from worker.stages.persist import PersistStage
from worker.stages.records import DEAD_LETTER_KEY_BYTES, Accepted, Record, Reject
from worker.stages.score import build_score_stage
from worker.store.database import make_engine
from worker.store.subscriptions import LiveSubscriptions, SubscriptionRepository

log = logging.getLogger(__name__)
REFUSED_RECORDS = (MessageSizeTooLargeError, RecordTooLargeError)  # no retry can send these


def record_of(event: EventT) -> Record:
    message = event.message
    return Record(
        value=message.value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


def ack(events: Sequence[EventT]) -> None:
    """Mark the batch done: Faust may now commit past it."""
    for event in events:
        event.ack()


def create_app(settings: Settings, engine: Engine, model_dir: str | None = None) -> faust.App:
    """model_dir: where `engine` was loaded from (default FINPULSE_MODEL_DIR), registered when no model is live yet."""
    kafka = settings.kafka
    serving = LiveModel(engine, model_dir or settings.engine.model_dir, settings.engine, settings.store.url)
    app = GuardedApp(
        settings.app_id,
        broker=kafka.url,
        broker_credentials=faust_credentials(kafka),
        store="memory://",
        # Faust makes an (empty, with the memory store) data folder, parents not included: keep it out of
        # the working directory.
        datadir=os.path.join(tempfile.gettempdir(), "faust-{conf.name}-data"),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=kafka.topic_partitions,
        producer_acks=-1,
        producer_linger=kafka.producer_linger_ms / 1000,
        producer_max_batch_size=kafka.producer_batch_bytes,
        producer_compression_type=None if kafka.producer_compression == "none" else kafka.producer_compression,
        processing_guarantee=kafka.processing_guarantee,
        broker_commit_interval=1.0,
        # Faust's defaults (60 s) leave a dead worker's partitions idle for a minute;
        # the model runs in a thread, so the event loop heart-beats in time at 20 s.
        broker_session_timeout=kafka.session_timeout_s,
        broker_rebalance_timeout=kafka.rebalance_timeout_s,
        web_port=kafka.web_port,
        web_bind=kafka.web_host,
        web_in_thread=False,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    docs = app.topic(settings.topic("docs"), key_type=bytes, value_type=bytes)
    scored = app.topic(settings.topic("scored"), key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.topic("dlq"), key_type=bytes, value_type=bytes)
    aggregates = app.topic(settings.topic("aggregates"), key_type=bytes, value_type=bytes)
    send_backoff = Backoff(0.5, 10.0)

    async def send(topic: faust.TopicT, key: bytes | None, value: bytes) -> Exception | None:
        """One send. A record the producer refuses for good (too large) comes back, so it cannot end the
        batch; anything else (the broker is away) is retried with back-off while the batch waits unacked."""
        attempt = 0
        name = topic.get_topic_name()
        while True:
            try:
                await topic.send(key=key, value=value)
                if attempt:  # only a send that reported trouble clears it: no lock on the per-message path
                    app.readiness.recovered(f"send {name}")
                return None
            except REFUSED_RECORDS as exc:
                metrics.SEND_FAILURES.labels(name).inc()
                return exc
            except Exception as exc:  # noqa: BLE001 - transient: hold the batch, as for a SQL outage
                delay = send_backoff.delay(attempt)
                attempt += 1
                app.readiness.trouble(f"send {name}", f"send failing, retry {attempt}: {type(exc).__name__}: {exc}")
                log.warning("send to %s failed (%r); retrying in %.1fs", name, exc, delay)
                await asyncio.sleep(delay)

    async def dead_letter(rejects: Sequence[Reject]) -> None:
        for reject in rejects:
            metrics.DLQ.labels(reject.stage, reject.reason).inc()
            key = reject.record.key[:DEAD_LETTER_KEY_BYTES] if reject.record.key else None
            failed = await send(dlq, key, reject.dead_letter().model_dump_json().encode())
            if failed:  # the letter is capped to fit, so only a broker with a smaller limit gets here
                record = reject.record
                log.error("could not dead-letter %s[%s]@%s (%s): %r", record.topic, record.partition, record.offset,
                          reject.reason, failed, extra=record_fields(record))

    async def emit_scored(batch: Sequence[Accepted]) -> None:
        for accepted in batch:
            item = accepted.value
            failed = await send(scored, item.id.encode(), item.model_dump_json().encode())
            if failed:
                await dead_letter([Reject(accepted.record, "send_failed", f"{type(failed).__name__}: {failed}", "score")])

    @app.agent(docs, concurrency=1)
    async def score(stream: faust.StreamT[bytes]) -> None:
        """Decode and score each batch; emit ScoredItems and dead letters, then ack."""
        stage_context("score")
        log.info("scoring %s into %s", docs.get_topic_name(), scored.get_topic_name())
        stage = build_score_stage(serving.engine, settings.pipeline, settings.cache, cache_prefix=settings.redis_prefix,
                                  max_engine_texts=kafka.batch_max * kafka.score_in_flight)
        windows = InOrder(kafka.score_in_flight)

        async def score_window(events: list[EventT], engine: Engine) -> tuple[list[EventT], list[Reject], list[Accepted]]:
            decoded = decode([record_of(e) for e in events], max_text_chars=settings.pipeline.max_text_chars)
            result = await stage(decoded.accepted, engine)
            return events, decoded.rejected + result.rejected, result.accepted

        async def finish_window(scored_window: tuple[list[EventT], list[Reject], list[Accepted]]) -> None:
            events, rejected, accepted = scored_window
            await dead_letter(rejected)
            await emit_scored(accepted)
            ack(events)

        try:
            async for events in stream.noack_take(kafka.batch_max, within=kafka.batch_wait_ms / 1000):
                metrics.DOCS_IN.inc(len(events))
                # A promoted model takes over from the next window: none mixes versions.
                await windows.start(score_window(events, serving.engine), finish_window)
        finally:
            await asyncio.shield(windows.cancel())
            await asyncio.shield(stage.close())

    @app.agent(scored, concurrency=1)
    async def persist(stream: faust.StreamT[bytes]) -> None:
        """Store each batch durably, emit the recomputed windows, then ack."""
        stage_context("persist")
        log.info("storing %s in SQL", scored.get_topic_name())
        database = make_engine(settings.store.url)
        subscriptions = LiveSubscriptions(SubscriptionRepository(database), settings.store.subscriptions_refresh_s)
        stage = PersistStage(database, settings.store, subscriptions, readiness=app.readiness)
        await stage.probe()
        try:
            async for events in stream.noack_take(kafka.persist_batch_max, within=kafka.persist_batch_wait_ms / 1000):
                decoded = decode_scored([record_of(e) for e in events])
                result = await stage(decoded.accepted)
                await dead_letter(decoded.rejected + result.rejected)
                for window in result.aggregates:  # recomputable from SQL: a refused send is counted, not retried
                    await send(aggregates, window.message_key, window.model_dump_json().encode())
                ack(events)
        finally:
            await asyncio.shield(database.dispose())

    @app.task
    async def send_alerts() -> None:
        """Publish stored alerts to <ns>.alerts and POST their webhooks (worker/delivery/outbox.py)."""
        stage_context("outbox")
        database = make_engine(settings.store.url)
        try:
            outbox = AlertOutbox(database, settings.webhooks, kafka_url=kafka.url, topic=settings.topic("alerts"),
                                 kafka_options=client_options(kafka))
            await outbox.run()
        finally:
            await asyncio.shield(database.dispose())

    lag = LagReporter(app, {docs.get_topic_name(), scored.get_topic_name()})

    @app.timer(5.0)
    async def report_consumer_lag() -> None:
        try:
            await lag.update()
        except Exception as exc:  # noqa: BLE001 - a metric never stops the worker (e.g. a partition mid-rebalance)
            log.debug("consumer lag not updated: %r", exc)

    @app.task
    async def follow_live_model() -> None:
        """Load a model promoted with `finpulse promote` beside the serving one (worker/entrypoints/live_model.py)."""
        await serving.run()

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        """Readiness: 200 while every part makes progress, 503 naming what is stuck and why."""
        report = app.readiness.report() | {"model_version": serving.engine.model_version, "backend": serving.engine.backend}
        return web.json(report, status=200 if report["status"] == "ok" else 503)

    @app.page("/live")
    async def live(web: Any, request: Any) -> Any:
        """Liveness: the event loop answers (a stuck stage is not ready, but restarting it would not help)."""
        return web.json({"status": "ok"})

    return app
