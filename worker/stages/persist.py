"""Stage 3, persist: documents, their windows and the alerts those fire, in one SQL transaction.

The order inside the transaction (`write`):
  1. upsert the documents, keyed by (id, model version): a redelivery overwrites itself;
  2. swap their key rows, noting what that changes in each window (new rows in, old rows out);
  3. lock those keys (PostgreSQL advisory locks, sorted) and add the changes to the windows;
  4. fetch the spike rules' history in one query, judge every rule (pure, worker/stages/rules.py);
  5. fetch the alerts that could silence a candidate in one query, apply cooldowns, store the rest.
The transaction commits all of it or none, and the changed windows go back to the driver
to emit only after the commit.

`__call__` returns only once every document is stored or rejected: a transient failure
(the database is down) is retried with back-off for as long as it takes, because the
driver commits the batch's offsets only after this returns; a batch the database refuses
for its content is split until the bad rows are found and rejected alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.aggregates import WindowAggregate
from schemas.alerts import Subscription
from schemas.news import ScoredItem
from worker import metrics
from worker.backoff import Backoff, is_permanent
from worker.health import Readiness
from worker.logs import record_fields
from worker.settings import StoreSettings
from worker.stages import rules
from worker.stages.records import Accepted, Reject
from worker.store.database import answers
from worker.store.subscriptions import LiveSubscriptions
from worker.store.unit_of_work import unit_of_work

log = logging.getLogger(__name__)


@dataclass
class Persisted:
    """What a batch left in SQL: the windows to emit, how many documents were stored, what was refused."""

    aggregates: list[WindowAggregate] = field(default_factory=list)
    stored: int = 0
    rejected: list[Reject] = field(default_factory=list)


class PersistStage:
    def __init__(
        self,
        database: AsyncEngine,
        settings: StoreSettings,
        subscriptions: LiveSubscriptions | None = None,
        *,
        deliver_webhooks: bool = True,
        readiness: Readiness | None = None,
    ) -> None:
        """deliver_webhooks=False stores the alerts it fires as `suppressed` (a replay with --no-webhooks).
        readiness: where a write that keeps failing is reported, so /health says the stage is stuck."""
        self.database = database
        self.windows = tuple(settings.windows)
        self.backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self.subscriptions = subscriptions
        self.deliver_webhooks = deliver_webhooks
        self.readiness = readiness or Readiness()

    async def probe(self, timeout_s: float = 5.0) -> None:
        """At start: a store that answers is up before the first batch (an idle worker is not a stuck store).
        One that does not stays 0 until a write gets through; the writes retry on their own."""
        try:
            async with asyncio.timeout(timeout_s):
                up = await answers(self.database)
        except TimeoutError:
            up = False
        metrics.STORE_UP.set(1 if up else 0)

    async def __call__(self, batch: Sequence[Accepted[ScoredItem]]) -> Persisted:
        """Store the batch durably (see the module's docstring); never raises for a row the database refuses."""
        result = Persisted()
        if batch:
            await self._write_durably(list(batch), result)
        return result

    async def write(self, items: Sequence[ScoredItem], subscriptions: Sequence[Subscription] = ()) -> list[WindowAggregate]:
        """One transaction: documents, keys, windows and alerts; raises on failure."""
        latest = {(i.id, i.model_version): i for i in items}  # a key twice in a batch: the last one wins
        if not latest:
            return []
        documents = list(latest.values())
        async with unit_of_work(self.database) as uow:
            written = await uow.documents.upsert(documents)
            deltas = await uow.documents.replace_keys(documents, self.windows)
            await uow.aggregates.lock((key_type, key, version) for _, _, key_type, key, version in deltas)
            aggregates = await uow.aggregates.add(deltas)
            if subscriptions:
                windows = rules.by_window(aggregates)
                baselines = await uow.aggregates.baselines(rules.baseline_ranges(subscriptions, windows))
                found = rules.candidates(
                    subscriptions, documents, windows, baselines,
                    now=datetime.now(UTC), deliver_webhooks=self.deliver_webhooks,
                )
                recent = await uow.alerts.near(rules.cooldown_queries(found))
                for alert in await uow.alerts.add(rules.after_cooldown(found, recent)):
                    metrics.ALERTS_FIRED.labels(alert["rule"]).inc()
        metrics.STORE_ROWS.inc(written)
        return [WindowAggregate(**row) for row in aggregates]

    async def _write_durably(self, batch: list[Accepted[ScoredItem]], result: Persisted) -> None:
        attempt = 0
        while True:
            try:
                watching = await self.subscriptions.current() if self.subscriptions else ()
                result.aggregates += await self.write([a.value for a in batch], watching)
                result.stored += len(batch)
                _observe_stored(batch)
                metrics.STORE_UP.set(1)
                self.readiness.recovered("persist")
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                if is_permanent(exc):
                    refused: BaseException = exc
                    break
                delay = self.backoff.delay(attempt)
                attempt += 1
                metrics.STORE_UP.set(0)
                metrics.STORE_RETRIES.inc()
                self.readiness.trouble("persist", f"SQL write failing, retry {attempt}: {_short(exc)}")
                log.warning("SQL write of %d rows failed (%s); retrying in %.1fs", len(batch), _short(exc), delay)
                await asyncio.sleep(delay)
        self.readiness.recovered("persist")  # the database answers: it refused rows, which are isolated below
        if len(batch) == 1:
            log.error("SQL store rejected document %s: %s", batch[0].value.id, _short(refused),
                      extra=record_fields(batch[0].record))
            result.rejected.append(Reject(batch[0].record, "store_rejected", str(refused)[:500], stage="persist"))
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            await self._write_durably(half, result)


def _observe_stored(batch: Sequence[Accepted[ScoredItem]]) -> None:
    """Throughput, batch size and end-to-end latency of a committed batch, for /metrics."""
    now = time.time()
    metrics.DOCUMENTS_STORED.inc(len(batch))
    metrics.PERSIST_BATCH_DOCUMENTS.observe(len(batch))
    metrics.LAST_STORED.set(now)
    from_event, from_kafka = metrics.END_TO_END.labels("event"), metrics.END_TO_END.labels("kafka")  # once a batch
    for accepted in batch:
        item = accepted.value
        from_event.observe(max(0.0, now - item.event_time.timestamp()))
        if item.received_at is not None:
            from_kafka.observe(max(0.0, now - item.received_at.timestamp()))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
