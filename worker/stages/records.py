"""What flows between the stages: a source record, the value a stage made of it, or why it refused it.

A driver (the Faust agents, `finpulse replay`, `finpulse score`) turns whatever it reads
into `Record`s and hands them to the stages; the stages return their results and their
rejects as data, each still carrying its record. So a stage never needs Kafka, and a
reject always knows where it came from when the driver dead-letters it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from schemas.news import DeadLetter

T = TypeVar("T")

# A dead letter must fit under the broker's message limit (1 MiB by default) or it cannot be
# sent anywhere: the original bytes are cut to this many, base64 makes them 4/3 larger.
DEAD_LETTER_VALUE_BYTES = 512 * 1024
DEAD_LETTER_KEY_BYTES = 4096
DEAD_LETTER_DETAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Record:
    """One input message as the stages see it; the Kafka coordinates are absent for a file line."""

    value: bytes | None
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None

    def arrived_at(self) -> datetime:
        """When the message reached Kafka: the event time of an item without `published_at`."""
        if self.timestamp_ms is None:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Reject:
    """A record a stage refused, with a machine-readable reason; the driver decides where it goes."""

    record: Record
    reason: str
    detail: str
    stage: str

    def dead_letter(self) -> DeadLetter:
        """The letter for the DLQ, small enough to send whatever the record's size: a record that
        cannot be accepted must still end somewhere (its size and hash identify the whole of it)."""
        record = self.record
        value = record.value or b""
        return DeadLetter(
            reason=self.reason,
            detail=self.detail[:DEAD_LETTER_DETAIL_CHARS],
            stage=self.stage,
            topic=record.topic or "",
            partition=record.partition if record.partition is not None else -1,
            offset=record.offset if record.offset is not None else -1,
            timestamp_ms=record.timestamp_ms,
            key_b64=base64.b64encode(record.key[:DEAD_LETTER_KEY_BYTES]).decode() if record.key else None,
            value_b64=base64.b64encode(value[:DEAD_LETTER_VALUE_BYTES]).decode(),
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
            value_truncated=len(value) > DEAD_LETTER_VALUE_BYTES,
            rejected_at=datetime.now(UTC),
        )


@dataclass(frozen=True, slots=True)
class Accepted(Generic[T]):
    record: Record
    value: T


@dataclass(slots=True)
class StageResult(Generic[T]):
    """A stage's output: what it made, in input order, and what it refused."""

    accepted: list[Accepted[T]] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)

    @property
    def values(self) -> list[T]:
        return [a.value for a in self.accepted]
