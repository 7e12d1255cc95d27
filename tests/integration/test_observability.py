"""What an operator sees of a running worker: /metrics (throughput, latency, lag) and JSON log lines."""

from __future__ import annotations

import json
import time

import pytest

from worker.samples import sample_items

from .conftest import Pipeline, wait_for


@pytest.mark.worker_env(FINPULSE_LOG_FORMAT="json")
def test_metrics_and_json_logs_describe_a_run(pipeline: Pipeline) -> None:
    # The store answered at start, so an idle worker is not a stuck one (the persist agent probes as it starts,
    # which may come just after /health first answers).
    wait_for(lambda: pipeline.worker.metric("finpulse_store_up") == 1, 30, "finpulse_store_up 1 before any write",
             pipeline.worker)
    assert pipeline.worker.metric("finpulse_documents_stored_total") == 0
    items = sample_items(200, seed=7)
    pipeline.send_items(items)
    pipeline.send([b"{not json", b'{"text": ""}'])
    pipeline.wait_stored(200)
    worker = pipeline.worker
    docs = pipeline.settings.topic("docs")

    wait_for(lambda: worker.metric("finpulse_documents_stored_total") >= 200, 30, "stored documents counted", worker)
    assert worker.metric("finpulse_documents_stored_total") == 200
    assert worker.metric("finpulse_end_to_end_seconds_count", clock="kafka") == 200
    assert worker.metric("finpulse_end_to_end_seconds_count", clock="event") == 200
    # Every document took some time and less than the test has run (its Kafka time is when it was sent).
    mean_s = worker.metric("finpulse_end_to_end_seconds_sum", clock="kafka") / 200
    assert 0 < mean_s < 120
    assert worker.metric("finpulse_persist_batch_documents_sum") == 200
    assert time.time() - worker.metric("finpulse_last_stored_timestamp_seconds") < 120
    assert worker.metric("finpulse_engine_batch_seconds_count", backend="torch") > 0
    assert worker.metric("finpulse_engine_batch_texts_sum") == worker.metric("finpulse_engine_texts_total") > 0
    assert worker.metric("finpulse_dlq_total") == 2

    # Lag: one series per docs partition, drained to 0 once everything is committed.
    def drained() -> bool:
        lags = [worker.metric("finpulse_consumer_lag", topic=docs, partition=str(p)) for p in range(4)]
        return sum(lags) == 0 and _series(worker, "finpulse_consumer_lag", docs) == 4

    wait_for(drained, 30, "consumer lag reported and drained to 0", worker)

    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, worker.log_tail()
    assert all(line["namespace"] == pipeline.settings.namespace and line["level"] and line["time"] for line in lines)
    started = {line.get("stage"): line["message"] for line in lines if line["logger"] == "worker.entrypoints.stream"}
    assert started.get("score", "").startswith(f"scoring {docs}"), started
    assert started.get("persist", "").startswith("storing"), started
    assert any(line["logger"].startswith(("faust", "mode", "aiokafka")) for line in lines)  # the libraries' lines too


def _series(worker, name: str, topic: str) -> int:  # type: ignore[no-untyped-def]
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        1 for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == name and s.labels.get("topic") == topic
    )
