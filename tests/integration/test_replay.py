"""`finpulse replay` on real Kafka, Redis and PostgreSQL: a time range re-scored with another model.

Three batches go through a running worker; the middle one is then replayed by Kafka
timestamp with a second model, first interrupted, then resumed, then all over again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from engines.training.tiny import build_tiny_checkpoint
from schemas.alerts import Rule, SubscriptionSpec
from tests.webhook_receiver import RECEIVER_ENV, SECRET_KEY, Receiver
from worker.samples import sample_items
from worker.security.secret_box import SecretBox
from worker.store.subscriptions import open_repository

from .conftest import ROOT, Pipeline, assert_aggregates_match_documents, wait_for

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def batch(prefix: str, seed: int) -> list[dict[str, Any]]:
    items = sample_items(100, seed=seed, prefix=prefix)
    for n, item in enumerate(items):
        item["published_at"] = (T0 + timedelta(seconds=6 * n)).isoformat()  # 10 minutes of 1-min windows
    return items


def run_replay(pipeline: Pipeline, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "replay", *args],
        cwd=ROOT, env=pipeline.worker.env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def snapshot(pipeline: Pipeline) -> tuple[list[Any], list[Any], list[Any]]:
    """The store's content, without the columns that record when a row was last written.

    Sums are rounded: SQL adds floats in whatever order it reads the rows.
    """
    docs = pipeline.db.fetch(
        "SELECT doc_id, model_version, source, lang, text, event_time, entities::text, sentiment_label,"
        " sentiment_probs::text, topic_label, topic_probs::text FROM documents ORDER BY 1, 2"
    )
    aggregates = pipeline.db.fetch(
        "SELECT window_s, window_start, key_type, key, model_version, count_negative, count_neutral,"
        " count_positive, volume, round(score_sum::numeric, 9) FROM aggregates ORDER BY 1, 2, 3, 4, 5"
    )
    alerts = pipeline.db.fetch("SELECT alert_id, observed, value, volume, delivery FROM alerts ORDER BY 1")
    return [tuple(r) for r in docs], [tuple(r) for r in aggregates], [tuple(r) for r in alerts]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.mark.worker_env(**RECEIVER_ENV)
def test_replay_rescores_a_time_range_beside_the_old_model_resumably_and_idempotently(
    pipeline: Pipeline, tmp_path: Path, receiver: Receiver
) -> None:
    rule = TypeAdapter(Rule).validate_python({"type": "threshold", "metric": "volume", "value": 3, "min_count": 3})
    spec = SubscriptionSpec(name="busy language", key_type="lang", key="*", rule=rule, webhook_url=receiver.url)
    asyncio.run(_subscribe(pipeline.db.url, spec))

    first, middle, last = batch("a", 1), batch("b", 2), batch("c", 3)
    pipeline.send_items(first)
    time.sleep(1.5)
    start = datetime.now(UTC)
    pipeline.send_items(middle)
    time.sleep(1.5)
    end = datetime.now(UTC)
    pipeline.send_items(last)
    pipeline.wait_stored(300)
    wait_for(lambda: _count(pipeline, "delivery = 'pending'") == 0, 60, "webhooks delivered", pipeline.worker)
    alerts_before, posts_before = _count(pipeline), len(receiver.requests)
    assert alerts_before > 0 and posts_before == alerts_before

    new_model = build_tiny_checkpoint(tmp_path / "model-v2", seed=1)
    args = ["--from", start.isoformat(), "--to", end.isoformat(), "--model", str(new_model), "--no-webhooks"]
    out = run_replay(pipeline, *args, "--max-messages", "40")
    assert "stopped early" in out
    versions = pipeline.db.fetch("SELECT model_version, count(*) FROM documents GROUP BY 1 ORDER BY 2 DESC")
    (old_version, old_count), (new_version, partial) = versions
    assert (old_count, partial) == (300, 40)

    out = run_replay(pipeline, *args)  # the same command resumes
    assert "complete" in out and "40 done before" in out
    replayed = pipeline.db.fetch(f"SELECT doc_id FROM documents WHERE model_version = '{new_version}'")
    assert sorted(r["doc_id"] for r in replayed) == sorted(item["id"] for item in middle)
    assert assert_aggregates_match_documents(pipeline.db) > 0
    # The new model's windows are the old ones' windows: alerts are per subscription, key and window.
    assert _count(pipeline) == alerts_before
    assert len(receiver.requests) == posts_before

    before = snapshot(pipeline)
    run_replay(pipeline, *args, "--restart")
    assert snapshot(pipeline) == before  # a second replay of the range changes nothing

    run_replay(pipeline, "--from", (start - timedelta(minutes=5)).isoformat(), "--to", datetime.now(UTC).isoformat())
    assert pipeline.db.count(f"SELECT count(*) FROM documents WHERE model_version = '{old_version}'") == 300
    assert snapshot(pipeline)[1:] == before[1:]


async def _subscribe(database_url: str, spec: SubscriptionSpec) -> None:
    async with open_repository(database_url, SecretBox([SECRET_KEY])) as repository:
        await repository.create(spec)


def _count(pipeline: Pipeline, where: str = "true") -> int:
    return pipeline.db.count(f"SELECT count(*) FROM alerts WHERE {where}")
