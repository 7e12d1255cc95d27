"""The scale test: `make test-scale` (FINPULSE_SCALE=1 pytest tests/scale), a few minutes; `make test` skips it.

It runs 1, 2 and 4 workers (FINPULSE_SCALE_WORKERS) over FINPULSE_SCALE_DOCS documents on a docs
topic of FINPULSE_SCALE_PARTITIONS partitions, with the tiny model, on the local Kafka, Redis and
PostgreSQL (`make services`), each run in its own namespace and database. Each run's figures go to
docs/scaling/workers-<n>.json, and test_persist_cost.py's (one persist transaction against the
documents already in the hour) to docs/scaling/persist-cost-<implementation>.json; after a session
that ran every worker count, docs/scaling.png and the tables in docs/scaling.md are rewritten from
them (tests/scale/report.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import asyncpg
import pytest

from ops import services as local_services
from tests.integration.conftest import PG_DSN, Database, _pg_execute, services, tiny_model  # noqa: F401 - fixtures
from tests.scale import report
from worker.store.database import upgrade

ENABLED = os.environ.get("FINPULSE_SCALE") == "1"
WORKER_COUNTS = [int(n) for n in os.environ.get("FINPULSE_SCALE_WORKERS", "1,2,4").split(",")]
DOCUMENTS = int(os.environ.get("FINPULSE_SCALE_DOCS", "8000"))
PARTITIONS = int(os.environ.get("FINPULSE_SCALE_PARTITIONS", "8"))
DONE = pytest.StashKey[set[int]]()


@pytest.fixture
def database(services: None) -> Iterator[Database]:  # noqa: F811 - the imported fixture, by name
    """As the integration tests' fixture, but the drop is retried: after thousands of inserts PostgreSQL's
    autovacuum may be analysing the database, and `DROP DATABASE ... WITH (FORCE)` may not end its process
    (InsufficientPrivilegeError for a role that is no superuser) until it finishes."""
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="the scale test runs with FINPULSE_SCALE=1 (make test-scale)")
    for item in items:
        if "tests/scale/" in str(item.path):
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[DONE] = set()


def record(config: pytest.Config, workers: int) -> None:
    config.stash[DONE].add(workers)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    done = session.config.stash.get(DONE, set())
    if ENABLED and exitstatus == 0 and done >= set(WORKER_COUNTS):
        report.write(sorted(done))
