"""Hostile input in shared batches with valid documents, on a real worker and PostgreSQL.

Every record ends somewhere: stored once (cleaned) or dead-lettered once with its reason,
size and hash; the other records of its batch are unaffected, documents sent after the bad
ones are stored within seconds, the worker stays up and SIGTERM stops it. A stage stuck on
retries shows on /health and in a metric until it gets through.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
import redis

from engines import load_engine
from worker.samples import sample_items
from worker.stages.decode import text_hash

from .conftest import PG_DSN, REDIS_URL, Pipeline, wait_for

pytestmark = pytest.mark.integration

HOSTILE: list[tuple[bytes, str]] = [
    # A dead letter carries the original bytes: these two would make one over Kafka's 1 MiB limit.
    (b'{"text": "' + b"x" * 900_000, "invalid_json"),
    (json.dumps({"text": "big lang", "lang": "e" * 999_000}).encode(), "invalid_field"),
    (json.dumps({"text": "ancient", "published_at": "0001-01-01T00:00:00+01:00"}).encode(), "invalid_field"),
    (json.dumps({"text": "far future", "published_at": "9999-12-31T23:59:30Z"}).encode(), "invalid_field"),
    (json.dumps({"text": "word " * 20_001}).encode(), "text_too_long"),  # over the hard cap of 100,000 characters
]
# A news article of ~30,000 characters: a document, stored and scored over chunks.
ARTICLE = " ".join(f"Paragraph {n}: the bank raised its outlook after quarterly profit beat estimates." for n in range(370))
# Redis holds a value finpulse did not write where this text's score would be: a miss, then overwritten.
FOREIGN_CACHED_TEXT = "Apple posts record profits"
# Stored after cleaning: PostgreSQL refuses NUL in text columns, look-alike keys would split aggregates.
CLEANED = [
    ({"id": "nul\u0000id", "source": "wire\u0000", "author": "a\u0000b", "text": "Siemens hebt die Prognose an"}, "nulid"),
    ({"id": "lookalike", "source": "news", "lang": "en\u200b", "tickers": ["TSLA\u200b"], "text": "Tesla rallies"},
     "lookalike"),
    ({"id": "article", "source": "wire", "text": ARTICLE}, "article"),
    ({"id": "foreign-cache", "source": "news", "text": FOREIGN_CACHED_TEXT}, "foreign-cache"),
]


def _forge_cache_entry(pipeline: Pipeline, model_dir: Path) -> str:
    """Write a value finpulse did not write under the key FOREIGN_CACHED_TEXT's score would have."""
    version = load_engine(model_dir, "torch").model_version
    key = f"{pipeline.settings.redis_prefix}score:{version}:{text_hash(FOREIGN_CACHED_TEXT)}"
    redis.Redis.from_url(REDIS_URL).set(key, b"\x00not json{", ex=600)
    return key


@pytest.mark.worker_env(FINPULSE_MAX_TEXT_CHARS="100000")
def test_hostile_records_end_in_the_dlq_once_and_their_batch_mates_are_stored(pipeline: Pipeline, tiny_model: Path) -> None:
    forged = _forge_cache_entry(pipeline, tiny_model)
    before = sample_items(40, seed=11, prefix="h-before")
    after = sample_items(40, seed=12, prefix="h-after")
    values = [json.dumps(i, ensure_ascii=False).encode() for i in before]
    values += [raw for raw, _ in HOSTILE] + [json.dumps(doc).encode() for doc, _ in CLEANED]
    values += [json.dumps(i, ensure_ascii=False).encode() for i in after]
    pipeline.send(values)  # at once: the hostile records share micro-batches with valid ones

    expected_ids = {i["id"] for i in before + after} | {stored_id for _, stored_id in CLEANED}
    pipeline.wait_stored(len(expected_ids), timeout=90)
    # Documents sent after the bad ones are not held up by them.
    later = sample_items(20, seed=13, prefix="h-later")
    pipeline.send_items(later)
    pipeline.wait_stored(len(expected_ids) + len(later), timeout=30)
    expected_ids |= {i["id"] for i in later}
    rows = pipeline.db.fetch("SELECT doc_id, source, lang, entities, author FROM documents")
    assert Counter(r["doc_id"] for r in rows) == Counter(expected_ids)  # each once, nothing else
    by_id = {r["doc_id"]: r for r in rows}
    assert (by_id["nulid"]["source"], by_id["nulid"]["author"]) == ("wire", "ab")
    assert (by_id["lookalike"]["lang"], json.loads(by_id["lookalike"]["entities"])) == ("en", ["TSLA"])
    [article] = pipeline.db.fetch("SELECT length(text) AS chars FROM documents WHERE doc_id = 'article'")
    assert article["chars"] == len(ARTICLE) > 30_000  # the whole article is stored
    assert json.loads(redis.Redis.from_url(REDIS_URL).get(forged))["sentiment"]  # the forged entry was overwritten

    letters = pipeline.read("dlq", expected=len(HOSTILE) + 1, timeout=10)  # waits: nothing else may arrive
    assert sorted(letter["reason"] for letter in letters) == sorted(reason for _, reason in HOSTILE)
    sizes = {letter["value_size"]: letter for letter in letters}
    for raw, _ in HOSTILE:
        letter = sizes[len(raw)]
        assert letter["value_sha256"] == hashlib.sha256(raw).hexdigest()
        kept = base64.b64decode(letter["value_b64"])
        assert raw.startswith(kept) and letter["value_truncated"] == (len(kept) < len(raw))
    assert pipeline.worker.running
    assert pipeline.worker.metric("finpulse_send_failures_total") == 0
    assert pipeline.worker.stop(), "SIGTERM did not stop the worker within 30 s"


def _set_connections(pipeline: Pipeline, allowed: bool) -> None:
    """Open or close the test database to new connections and end the open ones: the store is away."""

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await conn.execute(f'ALTER DATABASE "{pipeline.db.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", pipeline.db.name)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_stage_stuck_on_retries_is_not_ready_until_it_gets_through(pipeline: Pipeline) -> None:
    assert pipeline.worker.health()[0] == 200
    _set_connections(pipeline, allowed=False)
    try:
        items = sample_items(10, seed=21, prefix="stuck")
        pipeline.send_items(items)
        wait_for(lambda: pipeline.worker.health()[0] == 503, 60, "/health to report the stuck persist stage", pipeline.worker)
        status, report = pipeline.worker.health()
        [problem] = report["problems"]
        assert problem["component"] == "persist" and "SQL write failing" in problem["reason"], report
        assert pipeline.worker.metric("finpulse_stalled", component="persist") == 1
    finally:
        _set_connections(pipeline, allowed=True)
    pipeline.wait_stored(len(items), timeout=60)
    wait_for(lambda: pipeline.worker.health()[0] == 200, 30, "/health to be ok again", pipeline.worker)
    assert pipeline.worker.metric("finpulse_stalled", component="persist") == 0
    rows = pipeline.db.fetch("SELECT doc_id FROM documents")
    assert Counter(r["doc_id"] for r in rows) == Counter(i["id"] for i in items)
