"""One scenario's deployment: its namespace, database, subscription and workers, the fault window, and every check.

A scenario only says which fault to inject and when; this class does the rest the same way
each time (stream, wait, probe, drain) and turns the outcome into a Result or a failure
that carries the workers' logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from tests.faults.report import Result
from tests.faults.services import Database, Services
from tests.faults.traffic import (
    ALERT_WINDOW_S,
    DOCUMENTS,
    MALFORMED,
    PROBE,
    STREAM_S,
    Producer,
    Progress,
    plan_items,
    read_topic,
    window_volumes,
)
from tests.integration.conftest import (
    Worker,
    _free_port,
    assert_aggregates_match_documents,
)
from worker.settings import CacheSettings, KafkaSettings, Settings, StoreSettings
from worker.topics import STAGES, ensure_topics

FAULT_AT = 0.25  # inject the fault once this share of the stream is stored
SCENARIO_LIMIT_S = 480.0  # every wait in a scenario shares this budget


class Deployment:
    """One isolated deployment: namespace (topics, group, Redis prefix), database, subscription, workers."""

    def __init__(self, slug: str, label: str, services: Services, tiny_model: Path, tmp_path: Path, seed: int) -> None:
        self.name = label
        self.slug = slug
        self.services = services
        self.tmp_path = tmp_path
        self.started = time.monotonic()
        self.deadline = self.started + SCENARIO_LIMIT_S
        self.namespace = f"fault-{slug}-{uuid.uuid4().hex[:6]}"
        self.db = Database(services)
        self.settings = Settings(
            namespace=self.namespace,
            kafka=KafkaSettings(url=f"kafka://{services.kafka}"),
            store=StoreSettings(url=self.db.url),
            cache=CacheSettings(url=services.redis_url),
        )
        ensure_topics(self.settings)
        self.tiny_model = tiny_model
        self.items = plan_items(seed, slug, DOCUMENTS + PROBE)
        self.stream_items, self.probe_items = self.items[:DOCUMENTS], self.items[DOCUMENTS:]
        # A threshold at the median (language, minute) volume: about half the windows must alert, half must not.
        volumes = sorted(window_volumes(self.items).values())
        self.alert_volume = volumes[len(volumes) // 2]
        self.subscription_id = asyncio.run(self._subscribe())
        self.workers: list[Worker] = []
        self.killed: list[Worker] = []
        self.progress = Progress(self.db.dsn)
        self.progress.start()
        self.producer: Producer | None = None
        self.stream_started = 0.0  # time.time() when the stream started
        self.fault: tuple[float, float] | None = None
        self.notes: list[str] = []

    async def _subscribe(self) -> str:
        from schemas.alerts import SubscriptionSpec, ThresholdRule
        from worker.store.subscriptions import open_repository

        rule = ThresholdRule(type="threshold", metric="volume", op=">=", value=self.alert_volume,
                             min_count=self.alert_volume)
        spec = SubscriptionSpec(name=f"{self.namespace} volume", key_type="lang", key="*", rule=rule,
                                window_s=ALERT_WINDOW_S)
        async with open_repository(self.db.url) as repository:
            return (await repository.create(spec)).id

    # --- time budget

    def remaining(self, at_most: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.name}: scenario exceeded its {SCENARIO_LIMIT_S:.0f}s budget\n{self.logs()}")
        return min(at_most, left)

    def wait_for(self, check: Callable[[], bool], at_most: float, what: str) -> float:
        """Poll `check` every 0.25 s within the scenario's budget; returns the seconds it took."""
        started = time.monotonic()
        limit = self.remaining(at_most)
        while not check():
            if time.monotonic() - started > limit:
                raise AssertionError(f"{self.name}: timed out after {limit:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(0.25)
        return time.monotonic() - started

    # --- workers

    def worker_env(self) -> dict[str, str]:
        index = len(self.workers)
        return {
            **os.environ,
            "FINPULSE_NAMESPACE": self.namespace,
            "FINPULSE_KAFKA_URL": f"kafka://{self.services.kafka}",
            "FINPULSE_REDIS_URL": self.services.redis_url,
            "FINPULSE_DATABASE_URL": self.db.url,
            "FINPULSE_MODEL_DIR": str(self.tiny_model),
            "FINPULSE_WEB_PORT": str(_free_port()),
            "FINPULSE_MAX_TEXT_CHARS": "2000",
            "FINPULSE_CACHE_RETRY_S": "1",
            "FINPULSE_STORE_RETRY_MAX_S": "2",
            "FINPULSE_ENGINE_THREADS": "1",
            "F_DATADIR": str(self.tmp_path / f"worker{index}-data"),  # Faust's data dir, out of the checkout
        }

    def start_worker(self) -> Worker:
        worker = Worker(self.worker_env(), self.tmp_path / f"worker{len(self.workers)}.log")
        self.workers.append(worker)
        limit = self.remaining(120)
        try:
            worker.start(timeout=limit)
        except AssertionError as exc:
            raise AssertionError(f"{self.name}: worker {len(self.workers) - 1} did not become healthy: {exc}") from exc
        return worker

    def kill(self, worker: Worker) -> None:
        assert worker.proc is not None and worker.running
        self.killed.append(worker)
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)

    def logs(self, lines: int = 40) -> str:
        parts = []
        for n, worker in enumerate(self.workers):
            state = "running" if worker.running else f"exited {worker.proc and worker.proc.returncode}"
            parts.append(f"--- worker{n} ({state}) log tail:\n{worker.log_tail(lines)}")
        return "\n".join(parts)

    # --- the stream

    def start_stream(self, seconds: float = STREAM_S) -> None:
        messages: list[tuple[bytes | None, bytes]] = [
            (item["id"].encode(), json.dumps(item, ensure_ascii=False).encode()) for item in self.stream_items
        ]
        step = len(messages) // (len(MALFORMED) + 1)
        for n, value in enumerate(MALFORMED):
            messages.insert((n + 1) * step + n, (f"bad-{n}".encode(), value))
        self.producer = Producer(self.services.kafka, self.settings.topic("docs"), messages, seconds)
        self.stream_started = time.time()
        self.producer.start()

    def wait_mid_stream(self) -> None:
        target = int(DOCUMENTS * FAULT_AT)
        self.wait_for(lambda: self._alive_and(lambda: self.progress.latest() >= target), 240,
                      f"{target} documents stored before the fault")

    def _alive_and(self, check: Callable[[], bool]) -> bool:
        """`check()`, after making sure no worker died unless the scenario killed it."""
        for n, worker in enumerate(self.workers):
            if worker not in self.killed and not worker.running:
                raise AssertionError(f"{self.name}: worker {n} exited unexpectedly\n{self.logs()}")
        return check()

    def fault_window(self, started: float) -> None:
        """The fault was injected at `started` (time.time()) and is over now."""
        self.fault = (started, time.time())

    # --- after the fault

    def finish(self, *, live_workers: Sequence[Worker]) -> Result:
        """Drain, probe, check every guarantee, and measure; raises with the logs if any check fails."""
        assert self.producer is not None and self.fault is not None
        self.producer.finish(self.remaining(240))
        if self.producer.resent:
            self.notes.append(f"producer resent {self.producer.resent} sends that failed during the fault")
        expected = len(self.stream_items)
        self.wait_for(lambda: self._alive_and(lambda: self.progress.latest() >= expected), 240,
                      f"all {expected} streamed documents stored")
        # Serving again: new documents sent now are stored, and /health answers.
        producer = KafkaProducer(bootstrap_servers=self.services.kafka, acks="all")
        try:
            for item in self.probe_items:
                producer.send(self.settings.topic("docs"), key=item["id"].encode(),
                              value=json.dumps(item, ensure_ascii=False).encode())
            producer.flush(60)
        finally:
            producer.close()
        self.wait_for(lambda: self._alive_and(lambda: self.progress.latest() >= len(self.items)), 90,
                      f"the {PROBE} probe documents stored after recovery")
        for n, worker in enumerate(live_workers):
            assert worker.running and worker.healthy(), f"{self.name}: worker {n} is not serving\n{self.logs()}"
        time.sleep(2)  # anything late would show up as an extra row now
        ended = time.monotonic()
        self.progress.stop()
        return self._check(ended)

    def _check(self, ended: float) -> Result:
        db, name = self.db, self.name
        expected_ids = {item["id"] for item in self.items}
        rows = db.fetch("SELECT doc_id, count(*) AS n FROM documents GROUP BY doc_id")
        stored_ids = {r["doc_id"] for r in rows}
        lost = expected_ids - stored_ids
        unexpected = stored_ids - expected_ids
        duplicated = sum(r["n"] - 1 for r in rows)
        assert not lost, f"{name}: {len(lost)} documents lost, e.g. {sorted(lost)[:5]}\n{self.logs()}"
        assert not unexpected, f"{name}: unexpected documents {sorted(unexpected)[:5]}"
        assert duplicated == 0, f"{name}: {duplicated} duplicate document rows"
        assert db.count("SELECT count(DISTINCT model_version) FROM documents") == 1
        assert {r["lang"] for r in db.fetch("SELECT DISTINCT lang FROM documents")} == {i["lang"] for i in self.items}

        # Aggregates equal a recomputation from the stored documents, every window size.
        assert_aggregates_match_documents(db)  # type: ignore[arg-type]

        # Alerts: exactly the (language, minute) windows whose final volume reaches the threshold, once each.
        self.wait_for(lambda: db.count("SELECT count(*) FROM alerts WHERE NOT published") == 0, 60,
                      "the outbox to publish every alert")
        qualifying = {
            (r["key"], int(r["window_start"].timestamp()))
            for r in db.fetch(
                f"SELECT key, window_start FROM aggregates WHERE key_type = 'lang' AND window_s = {ALERT_WINDOW_S}"
                f" AND volume >= {self.alert_volume}"
            )
        }
        planned = {key for key, volume in window_volumes(self.items).items() if volume >= self.alert_volume}
        assert qualifying == planned, f"{name}: stored aggregates disagree with the planned windows"
        alert_rows = db.fetch("SELECT alert_id, subscription_id, key_type, key, window_s, window_start FROM alerts")
        fired = Counter((r["key"], int(r["window_start"].timestamp())) for r in alert_rows)
        assert all(r["subscription_id"] == self.subscription_id and r["key_type"] == "lang"
                   and r["window_s"] == ALERT_WINDOW_S for r in alert_rows)
        assert max(fired.values(), default=1) == 1, f"{name}: an alert is stored twice"
        assert set(fired) == qualifying, (
            f"{name}: alerts differ from the qualifying windows: missing {sorted(qualifying - set(fired))[:5]},"
            f" extra {sorted(set(fired) - qualifying)[:5]}"
        )
        assert qualifying and len(qualifying) < len(window_volumes(self.items)), "the alert check needs both kinds"
        on_topic = Counter(key.decode() for key, _ in read_topic(self.services.kafka, self.settings.topic("alerts")) if key)
        sql_ids = {r["alert_id"] for r in alert_rows}
        assert set(on_topic) == sql_ids, (
            f"{name}: alerts topic {len(on_topic)} ids vs SQL {len(sql_ids)}: "
            f"missing {sorted(sql_ids - set(on_topic))[:3]}, unknown {sorted(set(on_topic) - sql_ids)[:3]}"
        )
        alert_resends = sum(on_topic.values()) - len(on_topic)

        # Every malformed message reached the DLQ (at least once), and nothing valid did.
        letters = read_topic(self.services.kafka, self.settings.topic("dlq"))
        dead_keys = {key.decode() for key, _ in letters if key}
        bad_keys = {f"bad-{n}" for n in range(len(MALFORMED))}
        assert bad_keys <= dead_keys, f"{name}: malformed messages missing from the DLQ: {sorted(bad_keys - dead_keys)}"
        assert not dead_keys & expected_ids, f"{name}: valid documents in the DLQ: {sorted(dead_keys & expected_ids)[:5]}"

        # At least once: ScoredItems the score stage emitted more than once (redelivered after the fault).
        scored = Counter(key for key, _ in read_topic(self.services.kafka, self.settings.topic("scored")))
        redelivered = sum(scored.values()) - len(scored)

        start, end = self.fault  # type: ignore[misc]
        recovery = self.recovery_time(end)
        return Result(
            scenario=name,
            documents=len(self.items),
            lost=len(lost),
            duplicated=duplicated,
            redelivered=redelivered,
            alerts=len(fired),
            alert_resends=alert_resends,
            fault_s=end - start,
            recovery_s=recovery,
            duration_s=ended - self.started,
            workers_started=len(self.workers),
            notes=self.notes,
            stored_per_s=self.stored_per_second(),
            fault_at=(start - self.stream_started, end - self.stream_started),
        )

    def stored_per_second(self) -> list[int]:
        """Documents first stored in each second since the stream started (index = second)."""
        rows = self.db.fetch(
            f"SELECT floor(extract(epoch FROM stored_at) - {self.stream_started})::int AS s, count(*) AS n"
            " FROM documents GROUP BY 1 ORDER BY 1"
        )
        counts = [0] * (max((r["s"] for r in rows), default=-1) + 1)
        for r in rows:
            counts[max(0, r["s"])] += r["n"]
        return counts

    def recovery_time(self, fault_end: float) -> float:
        """Seconds from the end of the fault until the last docs partition is processed again.

        For each partition: the first document stored after the fault ended among those sent
        to it before then; a partition with no such backlog had nothing to recover (0).
        `stored_at` is set by PostgreSQL when a row is first inserted (redeliveries keep it).
        """
        assert self.producer is not None
        stored = {r["doc_id"]: float(r["t"]) for r in self.db.fetch("SELECT doc_id, extract(epoch FROM stored_at) AS t FROM documents")}
        resumed: dict[int, float] = {}
        for key, (partition, sent_at) in self.producer.sent.items():
            doc_id = key.decode() if key else ""
            if sent_at > fault_end or doc_id not in stored or stored[doc_id] <= fault_end:
                continue
            resumed[partition] = min(resumed.get(partition, float("inf")), stored[doc_id] - fault_end)
        return max(resumed.values(), default=0.0)

    def close(self) -> None:
        archive = self.services.dir / "logs" / self.slug
        shutil.rmtree(archive, ignore_errors=True)
        archive.mkdir(parents=True, exist_ok=True)
        for worker in self.workers:
            shutil.copy(worker.log_path, archive / worker.log_path.name)
        if self.progress.is_alive():
            self.progress.stop()
        for worker in self.workers:
            worker.stop()
        with contextlib.suppress(Exception):  # cleanup only: the services may be what failed
            admin = KafkaAdminClient(bootstrap_servers=self.services.kafka)
            try:
                admin.delete_topics([self.settings.topic(s) for s in STAGES])
            finally:
                admin.close()
        with contextlib.suppress(Exception):
            self.db.drop()

