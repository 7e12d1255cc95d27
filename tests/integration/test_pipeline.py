"""End to end on real Kafka, Redis and PostgreSQL: docs → score → scored → persist → SQL."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from kafka import KafkaConsumer

from ops import services as local_services
from worker.samples import sample_items

from .conftest import KAFKA, Pipeline, assert_aggregates_match_documents, wait_for

MALFORMED: list[tuple[bytes, str]] = [
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
    (b'{"text": "caf\xc3 cr\xc3\xa8me"}', "invalid_utf8"),
    (b"{this is not json", "invalid_json"),
    (b'{"text": "unterminated', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b"42", "not_an_object"),
    (b'{"source": "twitter"}', "missing_text"),
    (b'{"text": ""}', "empty_text"),
    (b'{"text": "  \\t\\n  "}', "empty_text"),
    (b'{"text": 12345}', "invalid_field"),
    (b'{"text": ["a", "list"]}', "invalid_field"),
    (b'{"text": "ok", "tickers": "AAPL"}', "invalid_field"),
    (json.dumps({"text": "x" * 2001}).encode(), "text_too_long"),
    (b'{"text": "one", "text": "two"}', "duplicate_key"),
    (b'{"text": "lone \\udc00 surrogate"}', "invalid_text"),
    (b"", "empty_message"),
    (b'{"text": "deep", "x": ' + b"[" * 50 + b"]" * 50 + b"}", "too_deep"),
]


def test_valid_documents_are_stored_once_and_malformed_go_to_the_dlq(pipeline: Pipeline) -> None:
    items = sample_items(1000, seed=1)
    assert {item["lang"] for item in items} >= {"en", "zh", "es", "de", "fr", "ja", "ar"}
    malformed = [MALFORMED[n % len(MALFORMED)] for n in range(50)]
    # A distinct key per bad message lets us match each dead letter to what was sent.
    bad_values = [value for value, _ in malformed]
    bad_keys = [f"bad-{n}".encode() for n in range(50)]
    half = len(items) // 2
    pipeline.send_items(items[:half])
    pipeline.send(bad_values, bad_keys)
    pipeline.send_items(items[half:])

    pipeline.wait_stored(1000)
    rows = pipeline.db.fetch(
        "SELECT doc_id, lang, sentiment_label, sentiment_probs, topic_label, model_version FROM documents"
    )
    assert sorted(r["doc_id"] for r in rows) == sorted(item["id"] for item in items)
    assert len({r["model_version"] for r in rows}) == 1
    assert {r["lang"] for r in rows} == {item["lang"] for item in items}
    for row in rows:
        assert row["sentiment_label"] in {"negative", "neutral", "positive"}
        probs = json.loads(row["sentiment_probs"])
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert row["topic_label"]

    letters = pipeline.read("dlq", expected=50)
    assert len(letters) == 50
    by_key = {base64.b64decode(letter["key_b64"]).decode(): letter for letter in letters}
    for n, (value, reason) in enumerate(malformed):
        letter = by_key[f"bad-{n}"]
        assert letter["reason"] == reason, letter
        assert base64.b64decode(letter["value_b64"]) == value
        assert letter["topic"] == pipeline.settings.topic("docs") and letter["offset"] >= 0
    assert pipeline.worker.running and pipeline.worker.healthy()
    time.sleep(2)  # anything late would now show up as an extra row
    assert pipeline.db.count() == 1000

    # Enrichment: the watchlist finds the companies each sample text names, in every script.
    entities = {r["doc_id"]: json.loads(r["entities"]) for r in pipeline.db.fetch("SELECT doc_id, entities FROM documents")}
    named = [item for item in items if "Tesla" in item["text"] or "特斯拉" in item["text"]]
    assert named and all("TSLA" in entities[item["id"]] for item in named)
    stored = assert_aggregates_match_documents(pipeline.db)
    assert stored > 0

    # The aggregates topic carries every recomputation; the last one per window and key is what SQL holds.
    latest = {}
    for message in pipeline.read("aggregates", expected=0, timeout=10):
        key = (message["window_s"], message["window_start"], message["key_type"], message["key"])
        latest[key] = (message["volume"], message["count_negative"])
    assert len(latest) == stored
    rows = pipeline.db.fetch("SELECT window_s, window_start, key_type, key, volume, count_negative FROM aggregates")
    for r in rows:
        key = (r["window_s"], r["window_start"].isoformat().replace("+00:00", "Z"), r["key_type"], r["key"])
        assert latest[key] == (r["volume"], r["count_negative"]), key


def test_same_text_twice_is_scored_by_the_engine_once(pipeline: Pipeline) -> None:
    text = "Siemens Energy Aktie bricht nach Gewinnwarnung um 12 Prozent ein"
    pipeline.send_items([{"id": "first", "source": "news", "text": text}])
    pipeline.wait_stored(1)
    engine_texts = pipeline.worker.metric("finpulse_engine_texts_total")
    assert engine_texts == 1

    pipeline.send_items([{"id": "second", "source": "other", "text": f"  {text} "}])
    pipeline.wait_stored(2)
    assert pipeline.worker.metric("finpulse_engine_texts_total") == engine_texts
    assert pipeline.worker.metric("finpulse_cache_hits_total") == 1
    scored = {item["id"]: item for item in pipeline.read("scored", expected=2)}
    assert scored["first"]["cached"] is False and scored["second"]["cached"] is True
    assert scored["first"]["sentiment"] == scored["second"]["sentiment"]


def _send_slowly(pipeline: Pipeline, items: list[dict], seconds: float) -> threading.Thread:
    """Produce in the background over `seconds`, so a fault lands mid-stream."""

    def run() -> None:
        chunk = max(1, len(items) // 20)
        for start in range(0, len(items), chunk):
            pipeline.send_items(items[start : start + chunk])
            time.sleep(seconds / 20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_redis_stopped_mid_stream_scoring_goes_on_and_caching_resumes(pipeline: Pipeline) -> None:
    items = sample_items(600, seed=2, prefix="r")
    sender = _send_slowly(pipeline, items, seconds=10)
    wait_for(lambda: pipeline.db.count() >= 100, 60, "first documents stored", pipeline.worker)
    local_services.stop("redis")
    try:
        wait_for(lambda: pipeline.worker.metric("finpulse_cache_errors_total") > 0, 30, "a cache error")
        sender.join()
        pipeline.wait_stored(600)
        assert pipeline.worker.running
    finally:
        local_services.start("redis")

    # Caching resumes by itself: new texts are written back, and a resend is served from Redis.
    # After its last failure the cache stays bypassed for up to FINPULSE_CACHE_RETRY_S (1 s here):
    # let that window pass, or a batch arriving within it is scored without the cache, as designed.
    time.sleep(1.5)
    again = sample_items(20, seed=3, prefix="r2")
    pipeline.send_items(again)
    pipeline.wait_stored(620)
    hits_before = pipeline.worker.metric("finpulse_cache_hits_total")
    pipeline.send_items([{**item, "id": item["id"] + "-dup"} for item in again])
    pipeline.wait_stored(640)
    assert pipeline.worker.metric("finpulse_cache_hits_total") >= hits_before + 20
    assert pipeline.db.count() == 640


def test_postgres_stopped_mid_stream_loses_and_duplicates_nothing(pipeline: Pipeline) -> None:
    items = sample_items(800, seed=4, prefix="p")
    sender = _send_slowly(pipeline, items, seconds=10)
    wait_for(lambda: pipeline.db.count() >= 100, 60, "first documents stored", pipeline.worker)
    local_services.stop("postgres")
    try:
        sender.join()
        wait_for(lambda: pipeline.worker.metric("finpulse_store_retries_total") > 0, 30, "a SQL retry")
        time.sleep(3)
        assert pipeline.worker.running
    finally:
        local_services.start("postgres")
    pipeline.wait_stored(800)
    rows = pipeline.db.fetch("SELECT doc_id, count(*) AS n FROM documents GROUP BY doc_id")
    assert sorted(r["doc_id"] for r in rows) == sorted(item["id"] for item in items)
    assert all(r["n"] == 1 for r in rows)
    assert pipeline.read("dlq", expected=0, timeout=2) == []
    assert_aggregates_match_documents(pipeline.db)


@pytest.mark.worker_env(FINPULSE_PROCESSING_GUARANTEE="exactly_once")
def test_exactly_once_mode_commits_its_outputs_in_kafka_transactions(pipeline: Pipeline) -> None:
    items = sample_items(300, seed=5, prefix="x")
    pipeline.send_items(items)
    pipeline.send([b"{not json"], [b"bad"])
    pipeline.wait_stored(300)
    consumer = KafkaConsumer(
        pipeline.settings.topic("scored"),
        bootstrap_servers=KAFKA,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # sees only what the worker's transactions committed
        consumer_timeout_ms=3000,
    )
    try:
        ids = [json.loads(message.value)["id"] for message in consumer]
    finally:
        consumer.close()
    assert sorted(ids) == sorted(item["id"] for item in items)
    assert [letter["reason"] for letter in pipeline.read("dlq", expected=1)] == ["invalid_json"]
    assert pipeline.worker.running and pipeline.db.count() == 300
