"""`finpulse replay`: re-process a time range of a topic into the store, e.g. with a new model.

The range [from, to) is located per partition with Kafka's offsets-for-times (message
timestamps), read by a consumer group of its own, and sent through the worker's own
stages: decode and validate, score (Redis cache included), then persist, whose one
transaction upserts the documents, recomputes the aggregates and judges the alerts.

- Another model: its version is part of every key, so its scores land beside the old ones.
- Resumable: the group's offsets are committed only after a batch is in SQL. The group
  is named after the topic, range and model, so running the same command again goes on
  where it stopped (`--restart` starts the range over).
- Idempotent: documents are upserts keyed by (id, model version); aggregates are
  recomputed from the stored documents; an alert exists once per subscription, key and
  window. A second replay of a range leaves the same rows (only `scored_at` moves).
- Webhooks: alerts a replay fires are delivered unless told not to (`--no-webhooks`),
  and are sent to the alerts topic either way.
- Messages that fail validation were dead-lettered when they first arrived; a replay
  counts them but does not dead-letter them a second time.
- Shadow (`--shadow`): a candidate model's rows beside the live ones and nothing else: no
  rule is judged (so no alert, no alerts-topic message, no webhook) and no window goes to
  the aggregates topic; the version is registered as `shadow` (worker/store/models.py), so
  the API keeps showing the live one, `finpulse compare-models` compares the two and
  `finpulse promote` can make it live. The live version itself cannot be replayed as a shadow.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from tqdm import tqdm

from engines import Engine
from worker.delivery.outbox import AlertOutbox
from worker.entrypoints.live_model import shared_path
from worker.kafka_security import client_options
from worker.settings import Settings
from worker.stages.decode import decode
from worker.stages.persist import PersistStage
from worker.stages.records import Record, Reject
from worker.stages.score import ScoreStage, build_score_stage
from worker.store.database import make_engine
from worker.store.models import ModelRegistry
from worker.store.subscriptions import LiveSubscriptions, SubscriptionRepository
from worker.topics import bootstrap_servers

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    group: str
    partitions: int = 0
    in_range: int = 0  # messages between the range's offsets when the replay started
    resumed_from: int = 0  # of those, already done by an earlier, interrupted run
    read: int = 0
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    def count(self, rejects: Sequence[Reject]) -> None:
        for reject in rejects:
            self.rejected[reject.reason] = self.rejected.get(reject.reason, 0) + 1


def replay_group(
    settings: Settings, topic: str, start: datetime, end: datetime, model_version: str, shadow: bool = False
) -> str:
    """The same topic, range and model always get the same group, which is what makes a replay resumable."""
    identity = f"{topic}|{start.isoformat()}|{end.isoformat()}|{model_version}" + ("|shadow" if shadow else "")
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return f"{settings.namespace}-replay-{digest[:12]}"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def _plan(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    topic: str,
    start: datetime,
    end: datetime,
    restart: bool,
) -> dict[TopicPartition, tuple[int, int, int]]:
    """Per partition: (first offset of the range, where to begin, first offset past the range)."""
    # The producer's metadata call is the public way to list a topic's partitions without subscribing.
    partitions = await producer.partitions_for(topic) if topic in await consumer.topics() else None
    if not partitions:
        raise ReplayError(f"topic {topic!r} does not exist or has no partitions")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    high = await consumer.end_offsets(tps)
    at_start = await consumer.offsets_for_times({tp: _ms(start) for tp in tps})
    at_end = await consumer.offsets_for_times({tp: _ms(end) for tp in tps})
    plan = {}
    for tp in tps:
        last = at_end[tp].offset if at_end[tp] is not None else high[tp]
        first = at_start[tp].offset if at_start[tp] is not None else last
        committed = None if restart else await consumer.committed(tp)
        begin = committed if committed is not None and first <= committed <= last else first
        plan[tp] = (first, begin, last)
    return plan


class ReplayError(RuntimeError):
    """The replay cannot start: an unknown topic or an empty range."""


async def replay(
    settings: Settings,
    engine: Engine,
    *,
    start: datetime,
    end: datetime,
    topic: str | None = None,
    deliver_webhooks: bool = True,
    restart: bool = False,
    batch_size: int = 256,
    max_messages: int | None = None,
    progress: bool = True,
    shadow_model_dir: str | None = None,
) -> ReplayReport:
    """shadow_model_dir: replay as a shadow (see the module's docstring), registering the engine's version with
    this checkpoint directory."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ReplayError("--from and --to need a time zone (e.g. 2026-11-28T08:00:00Z)")
    if end <= start:
        raise ReplayError(f"empty range: --to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    topic = topic or settings.topic("docs")
    shadow = shadow_model_dir is not None
    group = replay_group(settings, topic, start, end, engine.model_version, shadow)
    report = ReplayReport(group=group)
    brokers = bootstrap_servers(settings.kafka.url)
    security = client_options(settings.kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False, **security)
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True, **security)
    database = make_engine(settings.store.url)
    outbox = AlertOutbox(database, settings.webhooks, kafka_url=settings.kafka.url, topic=settings.topic("alerts"),
                         kafka_options=security)
    subscriptions = LiveSubscriptions(SubscriptionRepository(database), settings.store.subscriptions_refresh_s)
    persist = PersistStage(database, settings.store, None if shadow else subscriptions, deliver_webhooks=deliver_webhooks)
    score = build_score_stage(engine, settings.pipeline, settings.cache, cache_prefix=settings.redis_prefix)
    try:
        await consumer.start()
        await producer.start()
        if shadow_model_dir is not None:
            await _register_shadow(ModelRegistry(database), engine.model_version, shadow_model_dir)
        plan = await _plan(consumer, producer, topic, start, end, restart)
        report.partitions = len(plan)
        report.in_range = sum(last - first for first, _, last in plan.values())
        report.resumed_from = sum(begin - first for first, begin, _ in plan.values())
        remaining = {tp: last for tp, (_, begin, last) in plan.items() if begin < last}
        for tp, (_, begin, _) in plan.items():
            consumer.seek(tp, begin)
        bar = tqdm(
            total=report.in_range, initial=report.resumed_from, unit="msg", desc=f"replay {topic}",
            disable=None if progress else True,  # None: shown on a terminal only
        )
        with bar:
            while remaining and (max_messages is None or report.read < max_messages):
                records = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch_size)
                batch, next_offsets = [], {}
                for tp, messages in records.items():
                    in_range = [m for m in messages if m.offset < remaining[tp]]
                    room = len(in_range) if max_messages is None else max_messages - report.read - len(batch)
                    kept = in_range[: max(room, 0)]
                    batch.extend(kept)
                    if len(kept) < len(in_range):  # prefetched past --max-messages: come back to it next run
                        consumer.seek(tp, in_range[len(kept)].offset)
                    if kept:
                        next_offsets[tp] = kept[-1].offset + 1
                if batch:
                    await _process(settings, score, persist, None if shadow else producer, batch, start, end, report)
                    await consumer.commit(next_offsets)  # only now: the batch is durably in SQL
                    report.read += len(batch)
                    bar.update(len(batch))
                    for tp, offset in next_offsets.items():
                        consumer.seek(tp, offset)  # past what was processed, not what was prefetched
                    if not shadow:
                        await outbox.publish_pending()
                        if deliver_webhooks:
                            await outbox.deliver_due()
                for tp in list(remaining):
                    if await consumer.position(tp) >= remaining[tp]:
                        del remaining[tp]
        report.complete = not remaining
    finally:
        await score.close()
        await outbox.close()
        await database.dispose()
        await producer.stop()
        await consumer.stop()
    return report


async def _process(
    settings: Settings,
    score: ScoreStage,
    persist: PersistStage,
    producer: AIOKafkaProducer | None,
    batch: list[ConsumerRecord[bytes, bytes]],
    start: datetime,
    end: datetime,
    report: ReplayReport,
) -> None:
    """One batch through the worker's stages, until it is durably in SQL; rejects are counted, not dead-lettered.
    Without a producer (a shadow replay) the recomputed windows are not sent."""
    lo, hi = _ms(start), _ms(end)
    records = [
        Record(value=m.value, key=m.key, topic=m.topic, partition=m.partition, offset=m.offset, timestamp_ms=m.timestamp)
        for m in batch
        if lo <= m.timestamp < hi  # within the offsets, but stamped outside the range: not ours
    ]
    decoded = decode(records, max_text_chars=settings.pipeline.max_text_chars)
    scored = await score(decoded.accepted)
    persisted = await persist(scored.accepted)
    report.count(decoded.rejected + scored.rejected + persisted.rejected)
    report.stored += persisted.stored
    if producer is None:
        return
    for aggregate in persisted.aggregates:
        await producer.send(settings.topic("aggregates"), aggregate.model_dump_json().encode(), key=aggregate.message_key)
    await producer.flush()


async def _register_shadow(registry: ModelRegistry, version: str, model_dir: str) -> None:
    live = await registry.live()
    if live is not None and live.model_version == version:
        raise ReplayError(f"{version} is the live model: a shadow replay would rewrite its rows without their alerts;"
                          " replay it without --shadow")
    await registry.register(version, shared_path(model_dir))
