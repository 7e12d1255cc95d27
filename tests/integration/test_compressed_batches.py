"""Compressed record batches from a producer that is not finpulse's: Kafka's own Java client.

Every codec a producer may choose (none, gzip, snappy, lz4, zstd) is read and stored. A batch the
worker still cannot decode (here: its codec library made unimportable) pauses only its partition:
the others go on, /health says which partition and why, a metric counts it, SIGTERM still stops the
worker, and once a worker that can read the batch takes over, nothing is lost or stored twice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from ops.services.config import dir_of
from worker.samples import sample_items

from .conftest import KAFKA, Pipeline, Worker, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs Java for Kafka's own client (default-jre-headless)"),
]

HERE = Path(__file__).resolve().parent
JAVA_PRODUCER = HERE / "java" / "CompressedProducer.java"
BLOCKED_CODECS = HERE / "blocked_codecs"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def java_send(topic: str, partition: int, codec: str, items: list[dict]) -> None:
    """One run of the Java producer: the items as records of compressed batches on one partition."""
    libs = dir_of("kafka") / "libs"
    lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode()
    done = subprocess.run(
        ["java", "-cp", f"{libs}/*", str(JAVA_PRODUCER), KAFKA, topic, str(partition), codec],
        input=lines, capture_output=True, timeout=180, check=False,
    )
    assert done.returncode == 0, f"Java producer ({codec}) failed:\n{done.stderr.decode(errors='replace')[-3000:]}"


def stored_ids(pipeline: Pipeline) -> Counter[str]:
    return Counter(r["doc_id"] for r in pipeline.db.fetch("SELECT doc_id FROM documents"))


def test_every_codec_from_the_java_client_is_stored(pipeline: Pipeline) -> None:
    sent: list[str] = []
    for n, codec in enumerate(CODECS):
        items = sample_items(12, seed=40 + n, prefix=f"codec-{codec}")
        java_send(pipeline.settings.topic("docs"), n % pipeline.settings.kafka.topic_partitions, codec, items)
        sent += [item["id"] for item in items]
    pipeline.wait_stored(len(sent), timeout=120)
    assert stored_ids(pipeline) == Counter(sent)
    assert pipeline.worker.metric("finpulse_undecodable_batches_total") == 0


@pytest.mark.worker_env(PYTHONPATH=str(BLOCKED_CODECS))
def test_an_undecodable_batch_pauses_only_its_partition(pipeline: Pipeline, tmp_path: Path) -> None:
    docs = pipeline.settings.topic("docs")
    blocked = sample_items(6, seed=50, prefix="snappy") + sample_items(6, seed=51, prefix="behind")
    java_send(docs, 0, "snappy", blocked[:6])
    java_send(docs, 0, "gzip", blocked[6:])  # readable, but behind the unreadable batch on its partition
    readable = []
    for partition in (1, 2, 3):
        items = sample_items(6, seed=60 + partition, prefix=f"gzip-p{partition}")
        java_send(docs, partition, "gzip", items)
        readable += [item["id"] for item in items]

    pipeline.wait_stored(len(readable), timeout=90)
    wait_for(lambda: pipeline.worker.health()[0] == 503, 30, "/health to report the paused partition", pipeline.worker)
    status, report = pipeline.worker.health()
    [problem] = report["problems"]
    assert problem["component"] == f"partition {docs}[0]" and "snappy" in problem["reason"], report
    assert pipeline.worker.metric("finpulse_undecodable_batches_total", topic=docs) == 1
    assert pipeline.worker.metric("finpulse_partitions_paused", topic=docs) == 1
    assert pipeline.worker.metric("finpulse_stalled", component=f"partition {docs}[0]") == 1
    assert stored_ids(pipeline) == Counter(readable)  # nothing of partition 0, nothing twice
    assert pipeline.worker.running
    assert pipeline.worker.stop(), "SIGTERM did not stop the worker in time"

    # A worker that can read the batch resumes where the paused one stopped: everything, once.
    env = {name: value for name, value in pipeline.worker.env.items() if name != "PYTHONPATH"}
    successor = Worker(env, tmp_path / "successor.log")
    successor.start()
    try:
        pipeline.worker = successor
        pipeline.wait_stored(len(readable) + len(blocked), timeout=90)
        assert stored_ids(pipeline) == Counter(readable + [item["id"] for item in blocked])
        assert successor.health()[0] == 200
    finally:
        successor.stop()
