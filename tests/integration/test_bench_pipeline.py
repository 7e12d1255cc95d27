"""`finpulse bench --pipeline` end to end: every figure present and sane, and nothing of its deployment left behind.

It runs two workers (`--workers 2`), so the group's settling and the summing of both workers' counters,
CPU and memory are checked too; one worker is the same code with one process.

Speed is never asserted (docs/CONVENTIONS.md): only that the figures exist and agree with each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from kafka.admin import KafkaAdminClient

from tests.integration.conftest import KAFKA, PG_DSN, REDIS_URL, ROOT, _pg_fetch
from worker.samples import sample_items

N = 200
KEYS = (
    "engine_docs_per_s", "pipeline_docs_per_s", "cached_docs_per_s", "pipeline_engine_ratio",
    "p50_stored_ms", "p99_stored_ms", "p50_scored_ms", "p99_scored_ms", "startup_s", "peak_rss_mb",
    "n", "backend", "model_version", "settings", "cpu", "steady_rate_docs_per_s", "latency_n", "phases",
    "workers", "engine_threads", "peak_rss_mb_per_worker",
)


def test_bench_pipeline_reports_every_figure_and_cleans_up(services: None, tiny_model: Path, tmp_path: Path) -> None:
    items = sample_items(N + 20, seed=3, prefix="bench")
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    lines += lines[:10] + ["not json", json.dumps({"text": ""})]  # duplicates and rejects are skipped
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "FINPULSE_KAFKA_URL": f"kafka://{KAFKA}",
        "FINPULSE_REDIS_URL": REDIS_URL,
        "FINPULSE_DATABASE_URL": PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1),
        "FINPULSE_ENGINE_THREADS": "1",
        "FINPULSE_DETECT_LANGUAGE": "false",  # every item has `lang`; skips loading lingua (~10 s)
        "FINPULSE_BATCH_MAX": "32",  # exported tuning reaches the worker
    }
    bench = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--pipeline", "--model", str(tiny_model), "--data", str(data),
         "--n", str(N), "--repeats", "1", "--latency-s", "5", "--workers", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "could not remove" not in bench.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))

    assert [key for key in KEYS if key not in figures] == []
    assert figures["n"] == N
    assert figures["backend"] == "torch" and figures["model_version"].startswith("tiny-mbert")
    assert figures["settings"]["FINPULSE_BATCH_MAX"] == "32"
    assert not [name for name in figures["settings"] if "PASSWORD" in name]
    assert "FINPULSE_API_TOKEN" not in figures["settings"] and "FINPULSE_SECRET_KEYS" not in figures["settings"]
    assert figures["settings"]["FINPULSE_TOKEN_BUDGET"] == "512"  # a batch size, not a secret
    for rate in ("engine_docs_per_s", "pipeline_docs_per_s", "cached_docs_per_s", "steady_rate_docs_per_s"):
        assert figures[rate] > 0, rate
    assert figures["pipeline_engine_ratio"] == pytest.approx(figures["pipeline_docs_per_s"] / figures["engine_docs_per_s"])
    for stage in ("scored", "stored"):
        assert 0 < figures[f"p50_{stage}_ms"] <= figures[f"p99_{stage}_ms"], stage
    assert figures["p50_scored_ms"] <= figures["p50_stored_ms"]
    assert 0 < figures["startup_s"] <= figures["group_settled_s"] and figures["peak_rss_mb"] > 0
    assert figures["workers"] == 2 and len(figures["peak_rss_mb_per_worker"]) == 2
    assert figures["peak_rss_mb"] == pytest.approx(sum(figures["peak_rss_mb_per_worker"]))
    assert figures["engine_threads"] == 2  # the ceiling gets both workers' FINPULSE_ENGINE_THREADS=1
    assert figures["cpu"]["logical_cpus"] >= 1

    phases = figures["phases"]
    assert [phases[name]["docs"] for name in ("cold", "cached")] == [N, N]
    # Distinct texts, empty cache: all through the model, counted over both workers.
    assert phases["cold"]["worker"]["engine_texts"] == N
    assert phases["cached"]["worker"]["cache_hits"] > 0  # same texts, new ids: served from Redis
    assert phases["steady"]["docs"] == figures["latency_n"] >= 2
    assert sum(phase["worker"]["dlq"] for phase in phases.values()) == 0

    namespace = figures["namespace"]
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    try:
        assert [t for t in admin.list_topics() if t.startswith(namespace)] == []
    finally:
        admin.close()
    assert redis.Redis.from_url(REDIS_URL).keys(f"{namespace}:*") == []
    rows = asyncio.run(_pg_fetch(PG_DSN, f"SELECT 1 FROM pg_database WHERE datname = '{figures['database']}'"))
    assert rows == []
