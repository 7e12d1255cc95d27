"""The worker's Faust app: one unreadable record batch pauses its partition instead of killing the worker,
and fetches wait at most FINPULSE_FETCH_MAX_WAIT_MS at the broker.

aiokafka decodes record batches only when the Faust fetcher drains them. A batch in a codec whose
library is missing here, or one that fails its CRC, raises out of that drain, Faust's consumer
crashes, and after every restart it meets the same batch again: no partition is consumed any
more. Records drained from other partitions in the same call are lost on the way, too, since
their positions have already moved on.

So this consumer drains one partition at a time. A partition whose batch cannot be read is
paused, named on `/health` (not ready, with the reason) and counted in
`finpulse_undecodable_batches_total`; the other partitions go on. Its offset is not committed
past the batch, so once the worker can read it (the codec installed) a restart resumes there.
Written against faust-streaming 0.15's aiokafka driver, whose `_fetch_records` it replaces.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException, UnsupportedCodecError
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from worker import metrics
from worker.health import Readiness

log = logging.getLogger(__name__)
UNREADABLE = (UnsupportedCodecError, CorruptRecordException)
RecordMap = dict[TP, list[Any]]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, draining partitions one by one (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused_on: dict[TP, str] = {}
        self._published: set[TP] = set()

    def _create_worker_consumer(self, transport: Any) -> Any:
        """Faust's consumer, with the app's fetch wait instead of the 1.5 s its driver hard-codes. aiokafka keeps one
        fetch in flight per broker: a fetch for partitions with no new records (the docs, say, while the scored
        records are being produced) makes every other partition wait for it, which stalled the persist agent
        for 1.2-1.5 s whenever a burst of docs was scored (docs/performance.md, fifth round)."""
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.consumer.app.fetch_max_wait_ms  # read when the consumer starts its fetcher
        return consumer

    async def _fetch_records(
        self, consumer: Any, active_partitions: set[TP] | None, timeout: float | None = None, max_records: int | None = None
    ) -> RecordMap:
        if not self.consumer.flow_active:
            return {}
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        self._forget_unassigned(consumer)
        wanted = consumer.assignment() if active_partitions is None else active_partitions  # None: every one
        partitions = [tp for tp in wanted if tp not in self.paused_on]
        with fetcher._subscriptions.fetch_context():
            drained = await self._drain(consumer, partitions, max_records)
            if drained or not timeout:
                return drained
            # Nothing buffered: wait for the next fetch to land, as aiokafka's fetched_records does.
            waiter = fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=timeout)
            for future in pending:
                future.cancel()
            return await self._drain(consumer, partitions, max_records) if done else {}

    async def _drain(self, consumer: Any, partitions: list[TP], max_records: int | None) -> RecordMap:
        drained: RecordMap = {}
        for tp in partitions:
            if max_records is not None and max_records <= 0:
                break
            try:
                got = await consumer._fetcher.fetched_records({tp}, timeout=0, max_records=max_records)
            except UNREADABLE as exc:
                await self._pause(consumer, tp, exc)
                continue
            # aiokafka's own TopicPartition keys, as Faust's driver returns them: exactly-once commits need them.
            for key, records in got.items():
                drained[key] = records
                if max_records is not None:
                    max_records -= len(records)
        return drained

    async def _pause(self, consumer: Any, tp: TP, exc: BaseException) -> None:
        kafka_tp = TopicPartition(tp.topic, tp.partition)  # aiokafka checks the type; Faust's TP is its own
        position = await consumer.position(kafka_tp)
        detail = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        reason = f"paused at offset {position}: {detail}"
        self.paused_on[tp] = reason
        consumer.pause(kafka_tp)
        metrics.UNDECODABLE_BATCHES.labels(tp.topic).inc()
        self._publish()
        log.error("partition %s[%d] %s; the other partitions go on (restart once the batch can be read)",
                  tp.topic, tp.partition, reason, extra={"topic": tp.topic, "partition": tp.partition, "offset": position})

    def _forget_unassigned(self, consumer: Any) -> None:
        """A partition that moved to another worker is no longer this worker's problem."""
        if not self.paused_on:
            return
        assigned = consumer.assignment()
        gone = [tp for tp in self.paused_on if tp not in assigned]
        for tp in gone:
            del self.paused_on[tp]
        if gone:
            self._publish()

    def _publish(self) -> None:
        """Show the paused partitions on /health and in the gauge (this runs in the consumer's thread)."""
        readiness: Readiness = self.consumer.app.readiness
        for tp in self._published - self.paused_on.keys():
            readiness.recovered(f"partition {tp.topic}[{tp.partition}]")
        for tp, reason in self.paused_on.items():
            readiness.trouble(f"partition {tp.topic}[{tp.partition}]", reason)
        for topic in {tp.topic for tp in self._published | self.paused_on.keys()}:
            metrics.PARTITIONS_PAUSED.labels(topic).set(sum(tp.topic == topic for tp in self.paused_on))
        self._published = set(self.paused_on)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class GuardedApp(faust.App):
    """faust.App whose Kafka consumer pauses a partition on an unreadable batch and waits at most fetch_max_wait_ms
    for a fetch; `readiness` backs /health."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readiness = Readiness()
        self.fetch_max_wait_ms = fetch_max_wait_ms

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)
