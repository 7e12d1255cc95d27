"""One scale-out run: N `finpulse worker` processes in one consumer group on a docs topic with P partitions,
a burst of distinct documents, and what happened, measured from outside the workers.

The run is a real deployment on the local services, like the integration tests' `pipeline` fixture
(whose Worker, Database and checks it reuses): its own namespace (topics, consumer group, Redis
prefix) and PostgreSQL database. The workers start first and the group settles (every worker holds
docs partitions), then the documents are produced as fast as the producer goes, so the workers drain
a backlog. Every quarter second the run samples, from outside the workers:

- documents stored (SQL `count(*)`),
- the group's lag on the docs and scored topics (end offsets minus committed offsets: what KEDA's
  Kafka scaler reads),
- PostgreSQL sessions of this database waiting on an advisory lock (the persist stage's per-key locks).

CPU seconds come from /proc (psutil): each worker process, and the PostgreSQL backends serving this
database (isolated from other databases' work on the same server); the machine's total busy time says
how much else ran. PostgreSQL's per-database counters give the transactions and rows it took.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from tests.integration.conftest import KAFKA, REDIS_URL, Database, Worker, _free_port, wait_for
from worker.samples import sample_items
from worker.settings import Settings
from worker.topics import ensure_topics, group_partitions


@dataclass
class Sample:
    t: float  # seconds since the first document was sent
    stored: int
    lag_docs: int
    lag_scored: int
    advisory_holding: int  # sessions of this database holding advisory locks (in a persist transaction)
    advisory_waiting: int  # sessions of this database waiting for one (another worker holds a key they need)


@dataclass
class RunResult:
    workers: int
    documents: int
    partitions: int
    produce_s: float  # sending and flushing the burst
    stored_s: float  # first send -> last document stored
    drained_s: float  # first send -> lag 0 on docs and scored (offsets committed)
    docs_per_s: float  # documents / stored_s
    steady_docs_per_s: float  # slope of stored documents between 10 % and 90 % of the burst
    docs_partitions_per_worker: list[int]
    worker_cpu_s: list[float]
    postgres_cpu_s: float  # the backends serving this database
    machine_busy_cpu_s: float  # every process on the machine, while storing
    machine_cpus: int
    sql_transactions: int  # commits in this database by the workers (persist, outbox polls, subscription reloads)
    persist_transactions: int  # the persist stage's SQL transactions (finpulse_persist_batch_documents_count)
    persisted_documents: int  # documents they wrote, redeliveries included (..._sum)
    store_rows: int  # rows they upserted (finpulse_store_rows_total)
    sql_rows_written: int  # inserted + updated + deleted, every table of this database
    documents_inserted: int
    documents_rewritten: int  # upserts of a document already stored (redeliveries absorbed)
    advisory_held_share: float  # share of the samples while storing in which a session held advisory locks
    advisory_wait_share: float  # ... in which a session waited for one
    aggregate_rows: int
    loadavg_before: list[float]
    samples: list[Sample] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lscpu() -> dict[str, str]:
    """`lscpu`'s fields (model name, flags, ...), or /proc/cpuinfo's model name where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    except (OSError, subprocess.SubprocessError):
        return {"Model name": platform.processor()}


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _cpu_s(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system
        except psutil.Error:
            pass
    return found


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class ScaleRun:
    """N workers on a fresh namespace and DATABASE; `run()` sends DOCUMENTS and returns what it measured."""

    def __init__(self, workers: int, documents: int, partitions: int, model: Path, database: Database, workdir: Path) -> None:
        self.n = workers
        self.documents = documents
        self.partitions = partitions
        self.db = database
        self.namespace = f"scale{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "FINPULSE_NAMESPACE": self.namespace,
            "FINPULSE_KAFKA_URL": f"kafka://{KAFKA}",
            "FINPULSE_REDIS_URL": REDIS_URL,
            "FINPULSE_DATABASE_URL": database.url,
            "FINPULSE_MODEL_DIR": str(model),
            "FINPULSE_TOPIC_PARTITIONS": str(partitions),
            "FINPULSE_ENGINE_THREADS": "1",  # one engine thread per process: the per-core figure
        }
        self.settings = Settings.from_env(self.env, env_file=None)
        self.workdir = workdir
        self.workers: list[Worker] = []
        self.admin = KafkaAdminClient(bootstrap_servers=KAFKA)
        self.offsets = KafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        self.topics = {stage: self.settings.topic(stage) for stage in ("docs", "scored", "dlq")}
        self.own_transactions = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> ScaleRun:
        ensure_topics(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        try:
            ours = [t for t in self.admin.list_topics() if t.startswith((f"{self.namespace}.", f"{self.namespace}-"))]
            if ours:
                self.admin.delete_topics(ours)
            self.admin.delete_groups([self.settings.app_id])
            cache = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
            try:  # the run's cached scores
                keys = list(cache.scan_iter(match=f"{self.settings.redis_prefix}*", count=1000))
                for start in range(0, len(keys), 1000):
                    cache.delete(*keys[start:start + 1000])
            finally:
                cache.close()
        finally:
            self.offsets.close()
            self.admin.close()

    def start_workers(self) -> None:
        """Start all N at once (each on its own web port), then wait until every one is healthy."""
        for i in range(self.n):
            env = {**self.env, "FINPULSE_WEB_PORT": str(_free_port())}
            worker = Worker(env, self.workdir / f"worker-{i}.log")
            with worker.log_path.open("ab") as log:  # Faust's data directory goes to cwd, not into the repository
                worker.proc = subprocess.Popen(
                    [sys.executable, "-m", "worker", "worker"], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            self.workers.append(worker)
        for worker in self.workers:
            wait_for(worker.healthy, 180, f"worker healthy on :{worker.port}", worker)

    def assignment(self) -> list[list[int]] | None:
        """Docs partitions of each member while the group is Stable with all N members, else None."""
        state, held = group_partitions(self.admin, self.settings.app_id, self.topics["docs"])
        return held if state == "Stable" and len(held) == self.n else None

    def wait_group(self, timeout: float = 120) -> list[list[int]]:
        """Until the group is Stable with N members that hold every docs partition between them."""
        held: list[list[int]] = []

        def settled() -> bool:
            nonlocal held
            held = self.assignment() or []
            return bool(held) and sorted(p for parts in held for p in parts) == list(range(self.partitions))

        wait_for(settled, timeout, f"group {self.settings.app_id} stable with {self.n} members")
        return held

    # --- measurements ------------------------------------------------------------------------------------

    def lag(self) -> tuple[int, int]:
        """The group's lag on docs and on scored: end offsets minus committed offsets (0 where none yet)."""
        tps = [TopicPartition(self.topics[s], p) for s in ("docs", "scored") for p in range(self.partitions)]
        ends = self.offsets.end_offsets(tps)
        committed = self.admin.list_group_offsets({self.settings.app_id: tps}).get(self.settings.app_id, {})
        lag = {"docs": 0, "scored": 0}
        for tp in tps:
            done = committed.get(tp)
            offset = done.offset if done is not None and done.offset >= 0 else 0
            stage = "docs" if tp.topic == self.topics["docs"] else "scored"
            lag[stage] += max(0, ends[tp] - offset)
        return lag["docs"], lag["scored"]

    def dead_letters(self) -> int:
        tps = [TopicPartition(self.topics["dlq"], p) for p in range(self.partitions)]
        return sum(self.offsets.end_offsets(tps).values())

    async def _own(self, sql: str) -> list[asyncpg.Record]:
        """A query of this harness on the run's database: one transaction, counted so it can be taken out."""
        self.own_transactions += 1
        return await _fetch(self.db.dsn, sql)

    async def _pg_sample(self) -> tuple[int, int, int]:
        """Documents stored; sessions of this database holding, and waiting for, the persist stage's advisory locks."""
        rows = await self._own(
            "SELECT (SELECT count(*) FROM documents),"
            " count(DISTINCT pid) FILTER (WHERE granted), count(DISTINCT pid) FILTER (WHERE NOT granted)"
            " FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def _pg_counters(self) -> dict[str, int]:
        db = (await self._own(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()",
        ))[0]
        docs = (await self._own("SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'documents'"))[0]
        return {
            "xacts": int(db[0]), "rows": int(db[1]) + int(db[2]) + int(db[3]),
            "doc_ins": int(docs[0]), "doc_upd": int(docs[1]),
        }

    async def _backend_pids(self) -> list[int]:
        rows = await self._own("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [int(r[0]) for r in rows]

    def run(self, timeout: float = 600) -> RunResult:
        self.start_workers()
        held = self.wait_group()
        items = sample_items(self.documents, seed=self.n, prefix=self.namespace)
        payloads = [(item["id"].encode(), json.dumps(item, ensure_ascii=False).encode()) for item in items]
        loadavg = list(os.getloadavg())
        time.sleep(1.0)  # pg_stat counters are flushed about once a second
        before = asyncio.run(self._pg_counters())
        own_before = self.own_transactions
        pg_before = _cpu_s(asyncio.run(self._backend_pids()))
        worker_before = _cpu_s([w.proc.pid for w in self.workers if w.proc])
        busy_before = _machine_busy_s()

        producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all", linger_ms=20, batch_size=256 * 1024)
        produced: dict[str, float] = {}

        def send() -> None:
            for key, value in payloads:
                producer.send(self.topics["docs"], key=key, value=value)
            producer.flush()
            produced["at"] = time.monotonic()

        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        samples: list[Sample] = []
        stored_at: float | None = None
        pg_during: dict[int, float] = {}
        worker_after: dict[int, float] = {}
        busy_after = busy_before
        while True:
            stored, holding, waiting = asyncio.run(self._pg_sample())
            lag_docs, lag_scored = self.lag()
            now = time.monotonic() - started
            samples.append(Sample(round(now, 2), stored, lag_docs, lag_scored, holding, waiting))
            if stored_at is None:
                # backends may come and go with the pool: remember the latest CPU time of each one seen
                pg_during.update(_cpu_s(asyncio.run(self._backend_pids())))
            if stored_at is None and stored >= self.documents:
                stored_at = now
                worker_after = _cpu_s([w.proc.pid for w in self.workers if w.proc])
                busy_after = _machine_busy_s()
            if stored_at is not None and "at" in produced and lag_docs == 0 and lag_scored == 0:
                break
            for worker in self.workers:
                if not worker.running:
                    raise AssertionError(f"a worker exited:\n{worker.log_tail()}")
            if now > timeout:
                raise AssertionError(f"not drained after {timeout:.0f} s: {samples[-1]}")
            time.sleep(0.25)
        drained_at = time.monotonic() - started
        sender.join()
        producer.close()
        assert stored_at is not None
        persisted = {name: sum(w.metric(name) for w in self.workers) for name in (
            "finpulse_persist_batch_documents_count", "finpulse_persist_batch_documents_sum", "finpulse_store_rows_total",
        )}
        for worker in self.workers:  # an exiting backend flushes its statistics: the counters below are complete
            worker.stop()
        own = self.own_transactions
        after = asyncio.run(self._pg_counters())

        steady = _steady_rate(samples, self.documents)
        return RunResult(
            workers=self.n,
            documents=self.documents,
            partitions=self.partitions,
            produce_s=round(produced["at"] - started, 2),
            stored_s=round(stored_at, 2),
            drained_s=round(drained_at, 2),
            docs_per_s=round(self.documents / stored_at, 1),
            steady_docs_per_s=round(steady, 1),
            docs_partitions_per_worker=sorted(len(parts) for parts in held),
            worker_cpu_s=[round(worker_after[pid] - worker_before.get(pid, 0.0), 2) for pid in worker_after],
            postgres_cpu_s=round(sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_during.items()), 2),
            machine_busy_cpu_s=round(busy_after - busy_before, 2),
            machine_cpus=psutil.cpu_count() or 0,
            sql_transactions=after["xacts"] - before["xacts"] - (own - own_before),
            persist_transactions=int(persisted["finpulse_persist_batch_documents_count"]),
            persisted_documents=int(persisted["finpulse_persist_batch_documents_sum"]),
            store_rows=int(persisted["finpulse_store_rows_total"]),
            sql_rows_written=after["rows"] - before["rows"],
            documents_inserted=after["doc_ins"] - before["doc_ins"],
            documents_rewritten=after["doc_upd"] - before["doc_upd"],
            advisory_held_share=_share(samples, stored_at, lambda s: s.advisory_holding > 0),
            advisory_wait_share=_share(samples, stored_at, lambda s: s.advisory_waiting > 0),
            aggregate_rows=0,
            loadavg_before=loadavg,
            samples=samples,
        )


def _share(samples: list[Sample], until: float, holds: Callable[[Sample], bool]) -> float:
    """Share of the samples up to UNTIL (the last document stored) for which HOLDS is true."""
    taken = [s for s in samples if s.t <= until]
    return round(sum(1 for s in taken if holds(s)) / len(taken), 3) if taken else 0.0


def _steady_rate(samples: list[Sample], documents: int) -> float:
    """Documents per second between the samples where 10 % and 90 % of the burst were stored."""
    low = next((s for s in samples if s.stored >= 0.1 * documents), None)
    high = next((s for s in samples if s.stored >= 0.9 * documents), None)
    if low is None or high is None or high.t <= low.t:
        return 0.0
    return (high.stored - low.stored) / (high.t - low.t)
