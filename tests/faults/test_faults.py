"""Fault injection on real Kafka, Redis and PostgreSQL: one fault per scenario, 5,000 documents mid-stream.

Every scenario streams 5,000 documents in seven languages (plus malformed messages) at a
steady rate over a minute, injects its fault once a quarter is stored, then sends a probe
batch and checks, in Deployment.finish: every valid document is in SQL exactly once,
the aggregates equal a recomputation from the stored documents, the alerts are exactly
the qualifying windows (once each in SQL, each on the alerts topic), the malformed
messages are in the DLQ, and the worker is serving again. Run with `make test-faults`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.deployment import Deployment
from tests.faults.report import Result
from tests.faults.services import Services

pytestmark = pytest.mark.faults

Deploy = Callable[[str, str, int], Deployment]
Record = Callable[[Result], None]


def test_worker_killed_with_sigkill_and_restarted(deploy: Deploy, record: Record) -> None:
    d = deploy("kill", "kill -9 worker, restart", 11)
    victim = d.start_worker()
    d.start_stream()
    d.wait_mid_stream()
    started = time.time()
    d.kill(victim)
    d.fault_window(started)  # the replacement is launched at once
    replacement = d.start_worker()
    record(d.finish(live_workers=[replacement]))


def test_two_workers_one_killed_the_other_takes_over(deploy: Deploy, record: Record) -> None:
    d = deploy("rebalance", "2 workers, 1 killed (rebalance)", 12)
    survivor = d.start_worker()
    victim = d.start_worker()
    d.start_stream()
    consumed = "finpulse_docs_consumed_total"
    d.wait_for(lambda: survivor.metric(consumed) > 0 and victim.metric(consumed) > 0, 120,
               "both workers of the group to consume documents")
    d.wait_mid_stream()
    started = time.time()
    d.kill(victim)
    d.fault_window(started)  # nothing is restarted: the survivor must take over
    result = d.finish(live_workers=[survivor])
    assert len(d.workers) == 2
    record(result)


def test_kafka_broker_restarted_mid_stream(deploy: Deploy, record: Record, services: Services) -> None:
    d = deploy("kafka", "Kafka broker restart", 13)
    worker = d.start_worker()
    d.start_stream()
    d.wait_mid_stream()
    started = time.time()
    try:
        services.run("restart", "kafka")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbroker log:\n{services.log_tail('kafka')}") from exc
    d.fault_window(started)
    # The same worker process must reconnect: finish() fails if it exited.
    record(d.finish(live_workers=[worker]))


def test_redis_stopped_mid_stream(deploy: Deploy, record: Record, services: Services) -> None:
    d = deploy("redis", "Redis stopped 10 s", 14)
    worker = d.start_worker()
    d.start_stream()
    d.wait_mid_stream()
    started = time.time()
    services.run("stop", "redis")
    d.wait_for(lambda: worker.metric("finpulse_cache_errors_total") > 0, 30, "the worker to notice Redis is gone")
    time.sleep(max(0.0, started + 10 - time.time()))
    services.run("start", "redis")
    d.fault_window(started)
    result = d.finish(live_workers=[worker])
    assert worker.metric("finpulse_cache_up") == 1, "the cache was not taken back into use after Redis returned"
    record(result)


def test_postgres_stopped_for_30_seconds_mid_stream(deploy: Deploy, record: Record, services: Services) -> None:
    d = deploy("postgres", "PostgreSQL stopped 30 s", 15)
    worker = d.start_worker()
    d.start_stream()
    d.wait_mid_stream()
    started = time.time()
    services.run("stop", "postgres")
    down = time.monotonic()
    d.wait_for(lambda: worker.metric("finpulse_store_retries_total") > 0, 30, "a SQL write to be retried")
    time.sleep(max(0.0, down + 30 - time.monotonic()))
    assert worker.running, f"the worker exited while PostgreSQL was down\n{d.logs()}"
    services.run("start", "postgres")
    d.fault_window(started)
    record(d.finish(live_workers=[worker]))
