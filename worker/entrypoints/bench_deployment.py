"""A throw-away deployment for `finpulse bench --pipeline`: its own namespace, topics, PostgreSQL database,
Redis prefix and worker processes, on the services the user's settings name, removed afterwards.

Each worker is a real `python -m worker worker` child, started the way an operator starts it, so
the figures include everything production pays for (Faust, Kafka round trips, Redis, SQL). With
several, they share the consumer group as replicas do, and the figures are their sums.
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
import urllib.request
import uuid
from pathlib import Path

import asyncpg
from dotenv import dotenv_values
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from worker.kafka_security import client_options
from worker.settings import PREFIX, Settings
from worker.topics import bootstrap_servers, ensure_topics, group_partitions


def _is_secret(name: str) -> bool:
    """By whole words: FINPULSE_API_TOKEN and FINPULSE_SECRET_KEYS hold secrets, FINPULSE_TOKEN_BUDGET a batch size."""
    words = name.removeprefix(PREFIX).split("_")
    return bool({"PASSWORD", "SECRET"} & set(words)) or words[-1] == "TOKEN"


def service_environment() -> dict[str, str]:
    """FINPULSE_* for the bench: the local services' URLs and passwords (`ops.services.client_env`)
    under the user's own FINPULSE_* (.env, then the environment), so exported tuning such as
    FINPULSE_BATCH_MAX reaches the worker unchanged and the user's own services win."""
    from ops.services import ServiceError, client_env

    try:
        local = client_env()
    except (ServiceError, OSError):
        local = {}
    user = {k: v for k, v in dotenv_values(".env").items() if v is not None} if Path(".env").is_file() else {}
    user |= os.environ
    return local | {k.upper(): v for k, v in user.items() if k.upper().startswith(PREFIX)}


def shown_settings(settings: Settings) -> dict[str, str]:
    """Every setting as the worker read it, for the report: no secrets, URLs without their passwords."""
    return {
        name: re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", value)
        for name, value in settings.to_env().items()
        if not _is_secret(name)
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Deployment:
    """Namespace `bench<hex>`, database `fp_bench_<hex>` and WORKERS workers with MODEL and BACKEND; a context
    manager whose exit stops the workers and removes what was made, also after a failure or Ctrl-C."""

    def __init__(self, environment: dict[str, str], model: Path, backend: str | None, log_path: Path,
                 workers: int = 1) -> None:
        tag = uuid.uuid4().hex[:10]
        server = make_url(environment.get(PREFIX + "DATABASE_URL", ""))
        if not server.drivername.startswith("postgresql"):
            raise ValueError(
                f"the pipeline bench needs PostgreSQL, not {server.drivername!r}: start the local services "
                "(`finpulse services up`) or set FINPULSE_DATABASE_URL=postgresql+asyncpg://…"
            )
        self.database = f"fp_bench_{tag}"
        self._admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
        self.dsn = server.set(drivername="postgresql", database=self.database).render_as_string(hide_password=False)
        chosen = {"FINPULSE_BACKEND": backend} if backend else {}
        self.env = {
            **os.environ,
            **environment,
            **chosen,
            "FINPULSE_NAMESPACE": f"bench{tag}",
            "FINPULSE_DATABASE_URL": server.set(database=self.database).render_as_string(hide_password=False),
            "FINPULSE_MODEL_DIR": str(model.resolve()),
        }
        self.settings = Settings.from_env(self.env, env_file=None)
        partitions = self.settings.kafka.topic_partitions
        if not 1 <= workers <= partitions:
            raise ValueError(f"--workers must be between 1 and the topics' {partitions} partitions "
                             f"(FINPULSE_TOPIC_PARTITIONS), got {workers}")
        self.ports = [_free_port() for _ in range(workers)]
        self.log_path = log_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self._made_database = False
        self.leftovers: list[str] = []  # what remove() could not remove, and why

    def __enter__(self) -> Deployment:
        asyncio.run(_pg_execute(self._admin_dsn, f'CREATE DATABASE "{self.database}"'))
        self._made_database = True
        from worker.store.database import upgrade

        upgrade(self.settings.store.url)
        ensure_topics(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        self.leftovers = self.remove()

    def start_workers(self, timeout_s: float) -> tuple[float, float]:
        """Start every worker at once. Returns seconds from their start until all answer `/health` with 200,
        and until the consumer group is also stable with each of them holding docs partitions (with one
        worker, the same)."""
        with self.log_path.open("ab") as log:  # one log; each line names its process id
            started = time.perf_counter()
            for port in self.ports:
                env = {**self.env, "FINPULSE_WEB_PORT": str(port)}
                self.procs.append(subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env,
                                                   stdout=log, stderr=log))
        healthy_s = None
        while time.perf_counter() - started < timeout_s:
            if all(self._health(port) is not None for port in self.ports):
                healthy_s = time.perf_counter() - started
                break
            time.sleep(0.1)
        if healthy_s is None:
            raise RuntimeError(f"the workers were not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")
        if len(self.ports) > 1:
            self._wait_group_settled(started + timeout_s)
        return healthy_s, time.perf_counter() - started

    def _wait_group_settled(self, deadline: float) -> None:
        """Until the group is Stable with every worker holding docs partitions, so no rebalance falls into the
        timed phases. (One worker needs no wait: its /health is enough.)"""
        from kafka.admin import KafkaAdminClient

        kafka = self.settings.kafka
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(kafka.url), **client_options(kafka))
        try:
            while time.perf_counter() < deadline:
                self.check_running()
                state, held = group_partitions(admin, self.settings.app_id, self.settings.topic("docs"))
                if state == "Stable" and len(held) == len(self.ports) and all(held):
                    return
                time.sleep(0.1)
        finally:
            admin.close()
        raise RuntimeError(f"the group of {len(self.ports)} workers did not settle:\n{self.log_tail()}")

    @property
    def worker_pids(self) -> list[int]:
        assert self.procs, "the workers have not been started"
        return [proc.pid for proc in self.procs]

    def check_running(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited ({proc.returncode}):\n{self.log_tail()}")

    def _health(self, port: int) -> dict[str, object] | None:
        self.check_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return json.loads(response.read()) if response.status == 200 else None
        except (OSError, ValueError):
            return None

    def health(self) -> dict[str, object] | None:
        """The first worker's `/health` body while it answers 200, else None."""
        return self._health(self.ports[0])

    def metrics(self) -> dict[str, float]:
        """The workers' Prometheus samples, summed over their labels and the workers, by sample name."""
        totals: dict[str, float] = {}
        for port in self.ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def peak_rss_mb(self) -> list[float]:
        """Each worker's peak resident memory so far (VmHWM, MiB); empty where /proc has no such field."""
        peaks = []
        for pid in self.worker_pids:
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                return []
            found = [line.split()[1] for line in lines if line.startswith("VmHWM:")]
            if not found:
                return []
            peaks.append(int(found[0]) / 1024)
        return peaks

    def clear_cache(self) -> int:
        """Delete this namespace's Redis keys (its cached scores); returns how many."""
        if not self.settings.cache.url:
            return 0
        import redis

        client = redis.Redis.from_url(self.settings.cache.url, socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=f"{self.settings.redis_prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
            return len(keys)
        finally:
            client.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop_workers(self, timeout_s: float = 30) -> None:
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self) -> list[str]:
        """Stop the workers, then delete the topics, the consumer group, the Redis keys and the database;
        each step runs even if one before it failed. Returns what could not be removed, and why."""
        failures = []
        steps = [("workers", self.stop_workers), ("topics", self._delete_kafka), ("redis keys", self.clear_cache)]
        if self._made_database:
            steps.append(("database", lambda: asyncio.run(
                _pg_execute(self._admin_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            )))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - report it and go on removing the rest
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return failures

    def _delete_kafka(self) -> None:
        """The namespace's topics (the stages' and Faust's own, e.g. its assignor topic) and consumer group."""
        from kafka.admin import KafkaAdminClient

        kafka = self.settings.kafka
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(kafka.url), **client_options(kafka))
        try:
            ns = self.settings.namespace
            ours = [t for t in admin.list_topics() if t.startswith((f"{ns}.", f"{ns}-"))]
            if ours:
                admin.delete_topics(ours)
            if self.procs:
                outcomes = admin.delete_groups([self.settings.app_id]).items()  # group -> "OK" or an error's name
                refused = [f"group {group}: {error}" for group, error in outcomes if error not in ("OK", "GroupIdNotFoundError")]
                if refused:
                    raise RuntimeError("; ".join(refused))
        finally:
            admin.close()
