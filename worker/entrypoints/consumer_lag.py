"""Consumer lag per assigned partition, as the worker itself sees it, for /metrics.

Lag is the partition's high-water mark minus the offset this worker last committed: the
messages written but not yet done (read, scored or stored, then acked and committed).
Before the worker's first commit of a partition, its consumer's position stands in. It is
what KEDA's Kafka scaler reads from the broker, but per worker and every few seconds
without a broker round trip (the high-water mark arrives with every fetch). A partition
whose high-water mark is not known yet reports nothing rather than a guess; a revoked
partition's series is removed, so a rebalance leaves no stale lag behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker import metrics


def lag_of(highwaters: Mapping[Any, int | None], done: Mapping[Any, int | None]) -> dict[Any, int]:
    """Lag per partition where both the high-water mark and the offset done so far are known."""
    return {
        tp: max(0, end - offset)
        for tp, end in highwaters.items()
        if end is not None and (offset := done.get(tp)) is not None
    }


class LagReporter:
    """Sets `finpulse_consumer_lag{topic,partition}` from a Faust app's consumer."""

    def __init__(self, app: Any, topics: set[str]) -> None:
        self.app = app
        self.topics = topics
        self._shown: set[tuple[str, str]] = set()

    async def update(self) -> None:
        consumer = self.app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        highwaters = {tp: consumer.highwater(tp) for tp in assigned}
        committed = self.app.monitor.tp_committed_offsets or {}
        # Before this worker's first commit of a partition: where its consumer stands (the group's offset).
        done = {tp: committed.get(tp) if committed.get(tp) is not None else await consumer.position(tp) for tp in assigned}
        shown: set[tuple[str, str]] = set()
        for tp, lag in lag_of(highwaters, done).items():
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(lag)
            shown.add(labels)
        for labels in self._shown - shown:
            metrics.CONSUMER_LAG.remove(*labels)
        self._shown = shown
