"""Safe model roll-outs on real Kafka, Redis and PostgreSQL: two model versions over one stream.

A worker scores a stream with OLD (the tiny model, seed 0). `finpulse replay --shadow` writes
NEW's scores (seed 1: other labels) beside them: no alert, no webhook, nothing on the alerts
or aggregates topics. `finpulse compare-models` is checked against a brute-force recount
from the documents table. `finpulse promote NEW` then switches the running worker while
documents keep coming: the same process scores the rest with NEW, none twice, none lost,
and no partition goes back to OLD after NEW.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from pydantic import TypeAdapter

from engines.training.tiny import build_tiny_checkpoint
from schemas.alerts import Rule, SubscriptionSpec
from tests.webhook_receiver import RECEIVER_ENV, SECRET_KEY, Receiver
from worker.samples import sample_items
from worker.security.secret_box import SecretBox
from worker.stages.aggregates import GLOBAL, brute_force, epoch_seconds, window_start
from worker.store.subscriptions import open_repository

from .browser import ensure_chromium, render
from .conftest import KAFKA, ROOT, Pipeline, assert_aggregates_match_documents, wait_for

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RANGE = ["--from", T0.isoformat(), "--to", (T0 + timedelta(hours=1)).isoformat()]
LABELS = ("negative", "neutral", "positive")
SUBSCRIPTIONS = [  # name, key_type, window_s, rule, with the webhook
    ("negative languages", "lang", 60, {"type": "threshold", "metric": "negative_count", "value": 2, "min_count": 1}, True),
    ("bad news on a company", "entity", 300, {"type": "instant", "min_confidence": 0.9}, False),
    ("gloomy topic", "topic", 300, {"type": "threshold", "metric": "mean_score", "op": "<=", "value": -0.2, "min_count": 2}, False),
]


def items(prefix: str, count: int, seed: int, first: datetime) -> list[dict[str, Any]]:
    found = sample_items(count, seed=seed, prefix=prefix)
    for n, item in enumerate(found):
        item["published_at"] = (first + timedelta(seconds=6 * n)).isoformat()
    return found


def finpulse(pipeline: Pipeline, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=pipeline.worker.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, f"{args}: {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


async def _subscribe(database_url: str, specs: list[SubscriptionSpec]) -> list[str]:
    async with open_repository(database_url, SecretBox([SECRET_KEY])) as repository:
        return [(await repository.create(spec)).id for spec in specs]


def _documents(pipeline: Pipeline, version: str) -> dict[str, Any]:
    rows = pipeline.db.fetch(
        "SELECT doc_id, lang, source, entities, topic_label, sentiment_label, sentiment_score, sentiment_probs, event_time"
        f" FROM documents WHERE model_version = '{version}'"
    )
    return {r["doc_id"]: {**dict(r), "entities": json.loads(r["entities"]), "probs": json.loads(r["sentiment_probs"])}
            for r in rows}


def _keys(doc: dict[str, Any]) -> list[tuple[str, str]]:
    keys = [GLOBAL, ("source", doc["source"]), ("lang", doc["lang"] or "und"), ("topic", doc["topic_label"])]
    return keys + [("entity", e) for e in doc["entities"]]


def recount_flips(old: dict[str, Any], new: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int, dict[tuple[str, str], int]]]:
    """Per key: (documents, sentiment flips, topic flips, confusion) over the documents both scored."""
    found: dict[tuple[str, str], list[Any]] = {}
    for doc_id, a in old.items():
        b = new[doc_id]
        for key in [GLOBAL, ("lang", a["lang"] or "und"), ("topic", a["topic_label"])] + [("entity", e) for e in a["entities"]]:
            entry = found.setdefault(key, [0, 0, 0, Counter()])
            entry[0] += 1
            entry[1] += a["sentiment_label"] != b["sentiment_label"]
            entry[2] += a["topic_label"] != b["topic_label"]
            entry[3][(a["sentiment_label"], b["sentiment_label"])] += 1
    return {k: (v[0], v[1], v[2], dict(v[3])) for k, v in found.items()}


def recount_windows(docs: dict[str, Any], windows: tuple[int, ...]) -> dict[tuple[int, int, str, str], Any]:
    rows = [("v", d["event_time"], d["sentiment_label"], d["sentiment_score"], _keys(d)) for d in docs.values()]
    return {(w, start, kt, k): stats for w in windows for (start, kt, k, _), stats in brute_force(rows, w).items()}


def recount_alerts(subscriptions: list[tuple[str, str, int, dict[str, Any]]], docs: dict[str, Any]) -> set[tuple[Any, ...]]:
    """(subscription, key_type, key, window_s, start) of each alert, judged by hand (no cooldowns in these rules)."""
    windows = recount_windows(docs, (60, 300, 3600))
    fired = set()
    for sub_id, key_type, window_s, rule in subscriptions:
        if rule["type"] == "instant":
            for d in docs.values():
                if d["sentiment_label"] == "negative" and d["probs"]["negative"] >= rule["min_confidence"]:
                    start = window_start(epoch_seconds(d["event_time"]), window_s)
                    fired |= {(sub_id, kt, k, window_s, start) for kt, k in _keys(d) if kt == key_type}
            continue
        for (w, start, kt, k), stats in windows.items():
            if w != window_s or kt != key_type or stats.volume < rule["min_count"]:
                continue
            value = stats.negative if rule["metric"] == "negative_count" else stats.score_sum / stats.volume
            if (value <= rule["value"]) if rule.get("op") == "<=" else (value >= rule["value"]):
                fired.add((sub_id, kt, k, w, start))
    return fired


def render_in_chromium(page: Path) -> dict[str, Any]:
    """Open the page in headless Chromium: console and page errors, requests made, charts drawn, alert rows."""
    screenshot = os.environ.get("FINPULSE_COMPARE_SCREENSHOT")
    return render(
        page, ready="document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5",
        inspect="""() => ({
            charts: document.querySelectorAll('.js-plotly-plot').length,
            alert_rows: document.querySelectorAll('#alerts tbody tr').length})""",
        screenshots=(screenshot,) if screenshot else (),
    )


def topic_messages(topic: str) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        return list(consumer)
    finally:
        consumer.close()


@pytest.mark.worker_env(**RECEIVER_ENV, FINPULSE_MODEL_POLL_S="1")
def test_shadow_compare_and_promote_two_model_versions_over_one_stream(
    pipeline: Pipeline, tmp_path: Path, receiver: Receiver
) -> None:
    specs = [SubscriptionSpec(name=name, key_type=kt, key="*", window_s=w, rule=TypeAdapter(Rule).validate_python(rule),
                              webhook_url=receiver.url if hook else None) for name, kt, w, rule, hook in SUBSCRIPTIONS]
    ids = asyncio.run(_subscribe(pipeline.db.url, specs))
    judged = [(sub_id, kt, w, rule) for sub_id, (_, kt, w, rule, _) in zip(ids, SUBSCRIPTIONS)]

    # 1. The live worker scores the stream with OLD.
    start = datetime.now(UTC) - timedelta(seconds=1)
    live_items = items("a", 120, 7, T0)
    pipeline.send_items(live_items)
    pipeline.wait_stored(120)
    time.sleep(1.0)
    end = datetime.now(UTC)
    wait_for(lambda: pipeline.db.count("SELECT count(*) FROM alerts WHERE delivery = 'pending' OR NOT published") == 0,
             60, "alerts published and delivered", pipeline.worker)
    (old,) = [r["model_version"] for r in pipeline.db.fetch("SELECT DISTINCT model_version FROM documents")]
    alerts_before = pipeline.db.fetch("SELECT alert_id, model_version, delivery FROM alerts ORDER BY 1")
    posts_before = len(receiver.requests)
    assert alerts_before and posts_before == sum(r["delivery"] == "delivered" for r in alerts_before) > 0
    assert len(topic_messages(pipeline.settings.topic("alerts"))) == len(alerts_before)

    # 2. NEW in the shadow: its rows beside OLD's, nothing fired, sent or posted.
    new_dir = build_tiny_checkpoint(tmp_path / "model-v2", seed=1)
    replay = ["replay", "--from", start.isoformat(), "--to", end.isoformat()]
    refused = finpulse(pipeline, *replay, "--shadow", expect=2)  # the live model itself cannot be a shadow
    assert "is the live model" in refused.stderr
    finpulse(pipeline, *replay, "--model", str(new_dir), "--shadow")
    new = next(v for (v,) in pipeline.db.fetch("SELECT DISTINCT model_version FROM documents") if v != old)
    old_docs, new_docs = _documents(pipeline, old), _documents(pipeline, new)
    assert sorted(new_docs) == sorted(old_docs) == sorted(i["id"] for i in live_items)
    time.sleep(2.0)  # several outbox passes of the running worker
    assert pipeline.db.fetch("SELECT alert_id, model_version, delivery FROM alerts ORDER BY 1") == alerts_before
    assert len(receiver.requests) == posts_before
    assert len(topic_messages(pipeline.settings.topic("alerts"))) == len(alerts_before)
    aggregates_topic = [json.loads(m.value) for m in topic_messages(pipeline.settings.topic("aggregates"))]
    assert aggregates_topic and {a["model_version"] for a in aggregates_topic} == {old}
    assert assert_aggregates_match_documents(pipeline.db) > 0
    registry = {m["model_version"]: m for m in map(json.loads, finpulse(pipeline, "model", "versions", "--json").stdout.splitlines())}
    assert {v: m["role"] for v, m in registry.items()} == {old: "live", new: "shadow"}
    assert registry[new]["model_dir"] == str(new_dir.resolve())

    # 3. compare-models against a brute-force recount from the documents table.
    page, report = tmp_path / "compare.html", tmp_path / "compare.json"
    shown = finpulse(pipeline, "compare-models", *RANGE, old, new, "--out", str(page), "--json", str(report)).stdout
    assert "Label flips" in shown and "Aggregates:" in shown and "Alerts of 3 subscriptions" in shown
    result = json.loads(report.read_text())
    flips = recount_flips(old_docs, new_docs)
    assert flips[GLOBAL][1] > 0  # the two models disagree, so there is something to compare
    assert {(f["key_type"], f["key"]): (f["documents"], f["flipped"], f["topic_flipped"],
                                        {(o, n): c for o in LABELS for n, c in f["confusion"][o].items() if c})
            for f in result["flips"]} == flips
    assert result["documents"] == {"old": 120, "new": 120, "paired": 120, "flipped": flips[GLOBAL][1],
                                   "topic_flipped": flips[GLOBAL][2]}
    assert all(e["label_old"] != e["label_new"] for f in result["flips"] for e in f["examples"])

    windows = {side: recount_windows(docs, (60, 300, 3600)) for side, docs in (("old", old_docs), ("new", new_docs))}
    reported = {(a["window_s"], int(datetime.fromisoformat(a["window_start"]).timestamp()), a["key_type"], a["key"]): a
                for a in result["aggregates"]}
    assert set(reported) == set(windows["old"]) | set(windows["new"])
    for key, a in reported.items():
        for side in ("old", "new"):
            stats = windows[side].get(key)
            assert a[f"volume_{side}"] == (stats.volume if stats else 0), key
            assert a[f"negative_{side}"] == (stats.negative if stats else 0), key
            assert a[f"mean_score_{side}"] == (pytest.approx(stats.score_sum / stats.volume) if stats else None), key
    assert any(a["volume_old"] != a["volume_new"] for a in reported.values())  # topics moved

    fired = {side: recount_alerts(judged, docs) for side, docs in (("old", old_docs), ("new", new_docs))}
    assert fired["old"] != fired["new"]
    differences = {(d["subscription_id"], d["key_type"], d["key"], d["window_s"],
                    int(datetime.fromisoformat(d["window_start"]).timestamp()), d["fires_old"], d["fires_new"])
                   for d in result["alerts"]["differences"]}
    assert differences == {(*a, a in fired["old"], a in fired["new"]) for a in fired["old"] ^ fired["new"]}
    assert (result["alerts"]["old"], result["alerts"]["new"], result["alerts"]["both"]) == (
        len(fired["old"]), len(fired["new"]), len(fired["old"] & fired["new"]))
    html = page.read_text()
    assert "Plotly.newPlot" in html and old in html and new in html and "<script src" not in html  # offline
    if ensure_chromium():
        rendered = render_in_chromium(page)
        assert rendered["errors"] == [] and rendered["charts"] == 5 and rendered["requests"] == [page.as_uri()]
        assert rendered["alert_rows"] == len(result["alerts"]["differences"]) > 0
    finpulse(pipeline, "compare-models", *RANGE, old, "tiny-nope", expect=2)

    # 4. promote NEW while documents keep coming: no restart, none lost or written twice.
    pid = pipeline.worker.proc.pid  # type: ignore[union-attr]
    finpulse(pipeline, "promote", "tiny-nope", expect=2)
    streamed: list[dict[str, Any]] = []
    stop = threading.Event()

    def keep_sending() -> None:
        for n, item in enumerate(items("p", 600, 8, T0 + timedelta(minutes=20))):
            if stop.is_set():
                return
            pipeline.send_items([item])
            streamed.append(item)
            time.sleep(0.04 if n % 5 else 0.2)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_for(lambda: len(streamed) >= 20, 30, "documents streaming")
        finpulse(pipeline, "promote", new)
        statuses = []

        def switched() -> bool:
            status, body = pipeline.worker.health()
            statuses.append(status)
            return body["model_version"] == new

        wait_for(switched, 90, f"the worker on {new}", pipeline.worker)
        assert set(statuses) == {200}  # ready all along, while NEW loaded beside OLD
        at_switch = len(streamed)
        wait_for(lambda: len(streamed) >= at_switch + 40, 30, "documents after the switch")
    finally:
        stop.set()
        sender.join()
    after = items("q", 40, 9, T0 + timedelta(minutes=40))
    pipeline.send_items(after)
    total = 240 + len(streamed) + len(after)
    pipeline.wait_stored(total)
    time.sleep(1.0)
    assert pipeline.worker.running and pipeline.worker.proc.pid == pid  # type: ignore[union-attr]
    assert pipeline.db.count() == total
    stored = [(r["doc_id"], r["model_version"]) for r in pipeline.db.fetch("SELECT doc_id, model_version FROM documents")]
    version_of = {doc_id: v for doc_id, v in stored if doc_id[0] in "pq"}
    # Each once, in one version: a document scored by both would be two rows.
    assert sorted(doc_id for doc_id, _ in stored if doc_id[0] in "pq") == sorted(i["id"] for i in streamed + after)
    assert {version_of[i["id"]] for i in after} == {new}
    assert {version_of[i["id"]] for i in streamed} == {old, new}
    per_partition: dict[int, list[tuple[int, str]]] = {}
    for message in topic_messages(pipeline.settings.topic("docs")):
        if message.key and message.key.decode() in version_of:
            per_partition.setdefault(message.partition, []).append((message.offset, version_of[message.key.decode()]))
    for partition, seen in per_partition.items():
        versions = [v for _, v in sorted(seen)]
        assert versions == sorted(versions, key=lambda v: v == new), f"partition {partition} went back to {old}"
    assert pipeline.worker.metric("finpulse_model_info", version=new) == 1
    assert pipeline.worker.metric("finpulse_model_info", version=old) == 0
    registry = {m["model_version"]: m["role"] for m in map(json.loads, finpulse(pipeline, "model", "versions", "--json").stdout.splitlines())}
    assert registry == {old: "retired", new: "live"}
    assert assert_aggregates_match_documents(pipeline.db) > 0
    wait_for(lambda: pipeline.db.count("SELECT count(*) FROM alerts WHERE delivery = 'pending' OR NOT published") == 0,
             60, "alerts of NEW published and delivered", pipeline.worker)
    assert len(receiver.requests) == pipeline.db.count("SELECT count(*) FROM alerts WHERE delivery = 'delivered'")
