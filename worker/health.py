"""Readiness: whether every part of the worker makes progress, and if not, which part and why.

The worker is live while its event loop answers (`/live`). It is ready (`/health`) only while no
part of it is stuck: a stage retrying a write that keeps failing (the SQL store is down, a send
to Kafka keeps failing) or a partition paused on a batch no codec can read. Such a part reports
its trouble here when it starts retrying and clears it when it gets through, so `/health` and the
`finpulse_stalled` gauge say the same thing, with the reason and since when.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from worker import metrics


@dataclass(frozen=True, slots=True)
class Problem:
    component: str
    reason: str
    since: float  # Unix time of the first report of this trouble


class Readiness:
    """The problems of one worker; the consumer's thread reports too, hence the lock."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}
        self._lock = threading.Lock()

    def trouble(self, component: str, reason: str) -> None:
        """COMPONENT is stuck for REASON; a repeated report keeps the first time and the latest reason."""
        with self._lock:
            since = self._problems[component].since if component in self._problems else time.time()
            self._problems[component] = Problem(component, reason[:500], since)
        metrics.STALLED.labels(component).set(1)

    def recovered(self, component: str) -> None:
        with self._lock:
            known = self._problems.pop(component, None) is not None
        if known:
            metrics.STALLED.labels(component).set(0)

    @property
    def ready(self) -> bool:
        return not self._problems

    def report(self) -> dict[str, object]:
        """The body of `/health`: `ok`, or `not_ready` with each problem, its reason and how long it has lasted."""
        now = time.time()
        with self._lock:
            problems = sorted(self._problems.values(), key=lambda p: p.since)
        return {
            "status": "not_ready" if problems else "ok",
            "problems": [{"component": p.component, "reason": p.reason, "for_s": round(now - p.since, 1)} for p in problems],
        }
