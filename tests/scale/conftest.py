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

import os

import pytest

from tests.integration.conftest import database, services, tiny_model  # noqa: F401 - fixtures
from tests.scale import report

ENABLED = os.environ.get("FINPULSE_SCALE") == "1"
WORKER_COUNTS = [int(n) for n in os.environ.get("FINPULSE_SCALE_WORKERS", "1,2,4").split(",")]
DOCUMENTS = int(os.environ.get("FINPULSE_SCALE_DOCS", "8000"))
PARTITIONS = int(os.environ.get("FINPULSE_SCALE_PARTITIONS", "8"))
DONE = pytest.StashKey[set[int]]()


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
