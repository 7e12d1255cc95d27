"""The fault suite's own Kafka, Redis and PostgreSQL, and a throwaway database per scenario.

The scenarios stop and restart the servers, so the suite never touches the services other
tests use (9092/6379/5432): it runs its own set with `ops.services` under
/var/tmp/finpulse-faults-<uid> on ports 19092 (controller 19093, SASL_SSL 19094), 16379 and
15432, with the passwords `ops.services up` makes there (read back with `ops.services env`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from worker.store.database import upgrade

ROOT = Path(__file__).resolve().parents[2]


def _port(name: str, default: int) -> str:
    return os.environ.get(f"FINPULSE_FAULTS_{name}_PORT", str(default))



class Services:
    """Kafka, Redis and PostgreSQL for this suite only, driven through `python -m ops.services`."""

    def __init__(self) -> None:
        self.dir = Path(os.environ.get("FINPULSE_FAULTS_SERVICES_DIR") or f"/var/tmp/finpulse-faults-{os.getuid()}")
        ports = {
            "FINPULSE_KAFKA_PORT": _port("KAFKA", 19092),
            "FINPULSE_KAFKA_CONTROLLER_PORT": _port("KAFKA_CONTROLLER", 19093),
            "FINPULSE_KAFKA_SASL_PORT": _port("KAFKA_SASL", 19094),
            "FINPULSE_REDIS_PORT": _port("REDIS", 16379),
            "FINPULSE_POSTGRES_PORT": _port("POSTGRES", 15432),
        }
        self.env = {**os.environ, "FINPULSE_SERVICES_DIR": str(self.dir), **ports}
        self.kafka = f"127.0.0.1:{ports['FINPULSE_KAFKA_PORT']}"

    @functools.cached_property
    def client_env(self) -> dict[str, str]:
        """The worker's settings for these services, passwords included; read after `up`, which makes them."""
        result = subprocess.run([sys.executable, "-m", "ops.services", "env"], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=60, check=True)
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    @property
    def redis_url(self) -> str:
        return self.client_env["FINPULSE_REDIS_URL"]

    @property
    def pg_dsn(self) -> str:
        return self.client_env["FINPULSE_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)

    def run(self, *args: str, timeout: float = 240) -> float:
        """Run `ops.services ARGS` against our ports; returns its duration, raises with its output."""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "ops.services", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"ops.services {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return time.monotonic() - started

    def up(self) -> None:
        # Reuse the broker jars the default services resolved, instead of asking Maven again.
        libs = self.dir / "kafka" / "libs"
        default_libs = Path(f"/var/tmp/finpulse-services-{os.getuid()}") / "kafka" / "libs"
        if not libs.is_dir() and default_libs.is_dir() and any(default_libs.iterdir()):
            libs.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(default_libs, libs.with_name("libs.partial"), dirs_exist_ok=True)
            libs.with_name("libs.partial").rename(libs)
        self.run("up", timeout=900)

    def down(self) -> None:
        self.run("down")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = {"kafka": "kafka/logs/server.log", "redis": "redis/redis.log", "postgres": "postgres/postgres.log"}[name]
        try:
            return "\n".join((self.dir / path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- PostgreSQL helpers -------------------------------------------------------------------------------


async def _pg(dsn: str, sql: str, *, fetch: bool = True) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if fetch:
            return await conn.fetch(sql)
        await conn.execute(sql)
        return []
    finally:
        await conn.close()


class Database:
    """A fresh PostgreSQL database migrated with Alembic (the same shape as tests/integration's)."""

    def __init__(self, services: Services) -> None:
        self.admin_dsn = services.pg_dsn
        self.name = f"fp_{uuid.uuid4().hex[:12]}"
        self.dsn = f"{services.pg_dsn.rsplit('/', 1)[0]}/{self.name}"
        self.url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        asyncio.run(_pg(self.admin_dsn, f'CREATE DATABASE "{self.name}"', fetch=False))
        upgrade(self.url)

    def fetch(self, sql: str) -> list[asyncpg.Record]:
        return asyncio.run(_pg(self.dsn, sql))

    def count(self, sql: str = "SELECT count(*) FROM documents") -> int:
        return int(self.fetch(sql)[0][0])

    def drop(self) -> None:
        asyncio.run(_pg(self.admin_dsn, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', fetch=False))

