"""The traffic a scenario sends and watches: the planned documents, the steady producer, the progress sampler.

Everything here runs beside the worker, not in it: it decides what goes onto the docs topic
and when, and measures from the outside how much of it has been stored.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from worker.samples import sample_items

DOCUMENTS = 5000  # streamed per scenario (the issue asks for at least 5,000)
PROBE = 14  # sent once the fault is over, two per language: the worker must serve new work
STREAM_S = 60.0  # the stream is produced at a steady rate over this long
EVENT_BASE = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # published_at spread over 20 min from here
EVENT_SPAN_S = 1200
ALERT_WINDOW_S = 60

# Malformed input rides along in every stream; each must reach the DLQ (keys bad-<n>).
MALFORMED: list[bytes] = [
    b"\xff\xfe\x00garbage",
    b"{this is not json",
    b"[1, 2, 3]",
    b'{"source": "twitter"}',
    b'{"text": ""}',
    b'{"text": 12345}',
    b'{"text": "one", "text": "two"}',
    b"",
]


def plan_items(seed: int, prefix: str, count: int) -> list[dict[str, Any]]:
    """sample_items (seven languages), with published_at spread over 20 minutes so each language fills many windows."""
    rng = random.Random(seed)
    items = sample_items(count, seed=seed, prefix=prefix)
    for item in items:
        when = EVENT_BASE + timedelta(seconds=rng.uniform(0, EVENT_SPAN_S))
        item["published_at"] = when.isoformat().replace("+00:00", "Z")
    return items


def window_volumes(items: Sequence[dict[str, Any]]) -> Counter[tuple[str, int]]:
    volumes: Counter[tuple[str, int]] = Counter()
    for item in items:
        ts = datetime.fromisoformat(item["published_at"]).timestamp()
        volumes[(item["lang"], int(ts) - int(ts) % ALERT_WINDOW_S)] += 1
    return volumes



class Progress(threading.Thread):
    """Samples the stored-document count every 0.2 s on its own connection (None while PostgreSQL is away)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True, name="progress")
        self.dsn = dsn
        self.samples: list[tuple[float, int | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._poll())

    async def _poll(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._halt.is_set():
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=2)
                self.samples.append((time.monotonic(), int(await conn.fetchval("SELECT count(*) FROM documents", timeout=2))))
            except Exception:  # noqa: BLE001 - PostgreSQL may be the fault being injected
                self.samples.append((time.monotonic(), None))
                if conn is not None:
                    conn.terminate()
                conn = None
            await asyncio.sleep(0.2)
        if conn is not None:
            await conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def latest(self) -> int:
        for _, count in reversed(self.samples):
            if count is not None:
                return count
        return 0



def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[tuple[bytes | None, bytes]]:
    """Every message on `topic`, from the beginning to the end offsets at the time of the call."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        found: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {len(found)} messages so far")
            for records in consumer.poll(timeout_ms=1000).values():
                found.extend((r.key, r.value) for r in records)
        return found
    finally:
        consumer.close()


class Producer(threading.Thread):
    """Sends the stream at a steady rate in the background; at least once, every send checked."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]], seconds: float):
        super().__init__(daemon=True, name="producer")
        self.bootstrap = bootstrap
        self.topic = topic
        self.messages = list(messages)
        self.seconds = seconds
        self.error: BaseException | None = None
        self.resent = 0
        self.sent: dict[bytes | None, tuple[int, float]] = {}  # key -> (partition, wall time of the send)

    def run(self) -> None:
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            try:
                steps = max(1, int(self.seconds * 4))
                chunk = -(-len(self.messages) // steps)
                started = time.monotonic()
                pending = []
                for n, first in enumerate(range(0, len(self.messages), chunk)):
                    pending += [self._send(producer, m) for m in self.messages[first:first + chunk]]
                    time.sleep(max(0.0, started + (n + 1) * self.seconds / steps - time.monotonic()))
                self._settle(producer, pending)
            finally:
                producer.close(timeout=30)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test by join()
            self.error = exc

    def _send(self, producer: KafkaProducer, message: tuple[bytes | None, bytes]) -> tuple[Any, ...]:
        return message, time.time(), producer.send(self.topic, key=message[0], value=message[1])

    def _settle(self, producer: KafkaProducer, pending: list[tuple[Any, ...]]) -> None:
        for _attempt in range(5):
            producer.flush(timeout=180)
            failed = []
            for message, sent_at, future in pending:
                if future.is_done and future.succeeded():
                    self.sent[message[0]] = (future.value.partition, sent_at)
                else:
                    failed.append(message)
            if not failed:
                return
            self.resent += len(failed)
            pending = [self._send(producer, m) for m in failed]
        raise AssertionError(f"{len(pending)} messages could not be produced to {self.topic}")

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"the producer did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}") from self.error

