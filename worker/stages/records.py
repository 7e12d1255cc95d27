"""What flows between the stages: a source record, the value a stage made of it, or why it refused it.

A driver (the Faust agents, `finpulse replay`, `finpulse score`) turns whatever it reads
into `Record`s and hands them to the stages; the stages return their results and their
rejects as data, each still carrying its record. So a stage never needs Kafka, and a
reject always knows where it came from when the driver dead-letters it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from schemas.news import DeadLetter

T = TypeVar("T")


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
        record = self.record
        return DeadLetter(
            reason=self.reason,
            detail=self.detail,
            stage=self.stage,
            topic=record.topic or "",
            partition=record.partition if record.partition is not None else -1,
            offset=record.offset if record.offset is not None else -1,
            timestamp_ms=record.timestamp_ms,
            key_b64=base64.b64encode(record.key).decode() if record.key else None,
            value_b64=base64.b64encode(record.value or b"").decode(),
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
