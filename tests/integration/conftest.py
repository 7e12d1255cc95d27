"""Fixtures for tests against real Kafka, Redis and PostgreSQL (`finpulse services up`).

Each test gets its own namespace (topics, consumer group, Redis prefix) and its own
PostgreSQL database, so tests never see each other's data. Without the services the
tests skip on a laptop but fail on CI (CI=true), where a missing service is a bug.

The services' passwords come from their own state (`ops.services.client_env()`: the
credentials file under FINPULSE_SERVICES_DIR, with the FINPULSE_*_PORT overrides), so the
tests and the workers they start run with authentication on; FINPULSE_TEST_KAFKA,
FINPULSE_TEST_REDIS_URL and FINPULSE_TEST_POSTGRES_DSN override them whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from ops import services as local_services
from worker.settings import Settings
from worker.store.database import upgrade
from worker.topics import ensure_topics

from .browser import chromium  # noqa: F401 - a fixture: Debian's chromium for the report tests

ROOT = Path(__file__).resolve().parents[2]
LOCAL = local_services.client_env()
KAFKA = os.environ.get("FINPULSE_TEST_KAFKA", LOCAL["FINPULSE_KAFKA_URL"].split("://", 1)[1])
REDIS_URL = os.environ.get("FINPULSE_TEST_REDIS_URL", LOCAL["FINPULSE_REDIS_URL"])
PG_DSN = os.environ.get(
    "FINPULSE_TEST_POSTGRES_DSN", LOCAL["FINPULSE_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
)

pytestmark = pytest.mark.integration


def _port_open(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _shown(url: str) -> str:
    """URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def _missing_services() -> list[str]:
    missing = []
    if not _port_open(KAFKA):
        missing.append(f"Kafka at {KAFKA}")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as exc:
        missing.append(f"Redis at {_shown(REDIS_URL)} ({exc})")
    try:
        asyncio.run(_pg_execute(PG_DSN, "SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        missing.append(f"PostgreSQL at {_shown(PG_DSN)} ({exc})")
    return missing


def kafka_sasl_env(mechanism: str) -> dict[str, str]:
    """The worker's Kafka settings for the local SASL_SSL listener with MECHANISM; empty before passwords."""
    try:
        env = local_services.client_env(kafka_sasl=True)
    except local_services.ServiceError:
        return {}
    return {name: value for name, value in env.items() if name.startswith("FINPULSE_KAFKA_")} | {
        "FINPULSE_KAFKA_SASL_MECHANISM": mechanism
    }


async def _pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def services() -> None:
    missing = _missing_services()
    if missing:
        message = f"needs {', '.join(missing)}: run `finpulse services up` (or `make services`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.training.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny-mbert")


class Database:
    """A throw-away PostgreSQL database, migrated with Alembic like production."""

    def __init__(self) -> None:
        self.name = f"fp_{uuid.uuid4().hex[:12]}"
        base, _ = PG_DSN.rsplit("/", 1)
        self.dsn = f"{base}/{self.name}"
        self.url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    def fetch(self, sql: str) -> list[asyncpg.Record]:
        return asyncio.run(_pg_fetch(self.dsn, sql))

    def count(self, sql: str = "SELECT count(*) FROM documents") -> int:
        return int(self.fetch(sql)[0][0])


@pytest.fixture
def database(services: None) -> Iterator[Database]:
    """Dropped afterwards, retried: after many inserts PostgreSQL's autovacuum may be working in the database, and
    `DROP DATABASE ... WITH (FORCE)` cannot end its process (InsufficientPrivilegeError for a role that is no
    superuser) until it finishes."""
    db = Database()
    asyncio.run(_pg_execute(PG_DSN, f'CREATE DATABASE "{db.name}"'))
    upgrade(db.url)
    yield db
    for attempt in range(10):
        if not local_services.is_running("postgres"):
            return
        try:
            asyncio.run(_pg_execute(PG_DSN, f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
            return
        except asyncpg.InsufficientPrivilegeError:
            if attempt == 9:
                raise
            time.sleep(2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """`finpulse worker` as a child process, the way an operator runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["FINPULSE_WEB_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self.healthy(), timeout, f"worker healthy on :{self.port}", self)

    def healthy(self) -> bool:
        if not self.running:
            raise AssertionError(f"worker exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def health(self) -> tuple[int, dict[str, Any]]:
        """/health's status and body: 200 when ready, 503 with the problems when not."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True if the worker stopped on SIGTERM (or had already)."""
        if not self.running:
            return True
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(check: Callable[[], bool], timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = f"\nworker log:\n{worker.log_tail()}" if worker else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class Pipeline:
    """One isolated deployment: namespace, topics, database and a running worker."""

    def __init__(self, settings: Settings, database: Database, worker: Worker) -> None:
        self.settings = settings
        self.db = database
        self.worker = worker
        self.producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all", linger_ms=5)

    def send(self, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
        for value, key in zip(values, keys or [None] * len(values)):
            self.producer.send(self.settings.topic("docs"), key=key, value=value)
        self.producer.flush()

    def send_items(self, items: list[dict[str, Any]]) -> None:
        self.send(
            [json.dumps(item, ensure_ascii=False).encode() for item in items],
            [item["id"].encode() if "id" in item else None for item in items],
        )

    def read(self, stage: str, expected: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Messages on a stage's topic: until `expected` arrived, or for all of `timeout` if 0 are."""
        consumer = KafkaConsumer(
            self.settings.topic(stage),
            bootstrap_servers=KAFKA,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
        )
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while (expected == 0 or len(found) < expected) and time.monotonic() < deadline:
                found.extend(json.loads(message.value) for message in consumer)
        finally:
            consumer.close()
        return found

    def wait_stored(self, expected: int, timeout: float = 120) -> None:
        wait_for(lambda: self.db.count() >= expected, timeout, f"{expected} documents in PostgreSQL", self.worker)


@pytest.fixture
def pipeline(
    request: pytest.FixtureRequest, services: None, tiny_model: Path, database: Database, tmp_path: Path
) -> Iterator[Pipeline]:
    """A running worker; `@pytest.mark.worker_env(FINPULSE_X="...")` adds settings to its environment."""
    marker = request.node.get_closest_marker("worker_env")
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "FINPULSE_NAMESPACE": namespace,
        "FINPULSE_KAFKA_URL": f"kafka://{KAFKA}",
        "FINPULSE_REDIS_URL": REDIS_URL,
        "FINPULSE_DATABASE_URL": database.url,
        "FINPULSE_MODEL_DIR": str(tiny_model),
        "FINPULSE_WEB_PORT": str(_free_port()),
        "FINPULSE_MAX_TEXT_CHARS": "2000",
        "FINPULSE_CACHE_RETRY_S": "1",
        "FINPULSE_STORE_RETRY_MAX_S": "2",
        "FINPULSE_ENGINE_THREADS": "1",
        **(marker.kwargs if marker else {}),
    }
    settings = Settings.from_env(env, env_file=None)
    ensure_topics(settings)
    worker = Worker(env, tmp_path / "worker.log")
    worker.start()
    pipe = Pipeline(settings, database, worker)
    try:
        yield pipe
    finally:
        worker.stop()
        pipe.producer.close()
        admin = KafkaAdminClient(bootstrap_servers=KAFKA)
        try:
            # The stage topics and Faust's own (`<ns>-worker-__assignor-__leader`): nothing of the test stays.
            admin.delete_topics([t for t in admin.list_topics() if t.startswith(f"{namespace}.") or t.startswith(f"{namespace}-")])
        finally:
            admin.close()


def assert_aggregates_match_documents(db: Database, windows: tuple[int, ...] = (60, 300, 3600)) -> int:
    """Stored aggregates equal a brute-force recomputation from the stored documents; returns rows compared."""
    from worker.stages.aggregates import GLOBAL, brute_force

    docs = []
    for r in db.fetch(
        "SELECT model_version, event_time, sentiment_label, sentiment_score, source, lang, topic_label, entities"
        " FROM documents"
    ):
        keys = [GLOBAL, ("source", r["source"]), ("lang", r["lang"] or "und"), ("topic", r["topic_label"])]
        keys += [("entity", e) for e in json.loads(r["entities"])]
        docs.append((r["model_version"], r["event_time"], r["sentiment_label"], r["sentiment_score"], keys))
    expected = {}
    for w in windows:
        for (start, kt, k, v), st in brute_force(docs, w).items():
            expected[(w, start, kt, k, v)] = (st.negative, st.neutral, st.positive, st.volume, round(st.score_sum, 6))
    stored = {
        (r["window_s"], int(r["window_start"].timestamp()), r["key_type"], r["key"], r["model_version"]): (
            r["count_negative"], r["count_neutral"], r["count_positive"], r["volume"], round(r["score_sum"], 6)
        )
        for r in db.fetch("SELECT * FROM aggregates")
    }
    assert stored == expected
    return len(stored)
