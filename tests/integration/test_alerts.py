"""Alerts end to end on real Kafka, Redis and PostgreSQL: a scripted spike fires exactly what it should.

The tiny test model's scores are random but fixed, so the script picks, with that same
model, texts it labels negative (and others it does not) with a clear margin: the
worker will label them the same way, and the expected alerts follow from the script.
A random model may call almost nothing negative, so this module's checkpoint has its
negative logit shifted until about 40% of the candidate texts are.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter

from engines import load_engine
from engines.modeling import BertForSentimentAndTopic
from engines.training.tiny import build_tiny_checkpoint
from schemas.alerts import Alert, Rule, SubscriptionSpec
from tests.webhook_receiver import RECEIVER_ENV, SECRET_KEY, Receiver
from worker.delivery.webhooks import verify_signature
from worker.security.secret_box import SecretBox
from worker.store.subscriptions import open_repository

from .conftest import Pipeline, assert_aggregates_match_documents, wait_for

# An hour-aligned start in the past: windows of 60, 300 and 3600 s all begin here.
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
TEMPLATES = {
    "en": "Shares of ${t} fell {n}% after weak guidance",
    "de": "Die Aktie von ${t} verlor {n} Prozent",
    "es": "Las acciones de ${t} cayeron un {n}%",
    "fr": "Le titre ${t} recule de {n} %",
    "zh": "${t} 股价下跌{n}%",
    "ja": "${t} の株価が{n}%下落",
}
SPIKE = {"type": "spike", "metric": "negative_count", "method": "zscore", "threshold": 3, "baseline_windows": 10, "min_count": 12}


def candidates(ticker: str) -> list[tuple[str, str]]:
    return [(lang, tpl.format(t=ticker, n=n)) for n in range(1, 400) for lang, tpl in TEMPLATES.items()]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, its negative logit shifted so that about 40% of the candidate texts come out negative."""
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny-mbert-alerts")
    texts = [text for ticker in ("TSLA", "KO") for _, text in candidates(ticker)]
    engine = load_engine(str(path), "torch", max_length=128, token_budget=8192, threads=1)
    margins = sorted(
        math.log(p["negative"]) - max(math.log(v) for k, v in p.items() if k != "negative")
        for p in (scores.sentiment.probs for scores in engine.predict(texts))
    )
    model = BertForSentimentAndTopic.from_pretrained(path)
    with torch.no_grad():
        model.sentiment_head.bias[model.config.sentiment_labels.index("negative")] -= margins[int(len(margins) * 0.6)]
    model.save_pretrained(path)
    return path


def texts_by_label(model_dir: Path, ticker: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(lang, text) the model labels negative, and ones it labels otherwise, each with a margin of 0.05."""
    engine = load_engine(str(model_dir), "torch", max_length=128, token_budget=8192, threads=1)
    negative, other = [], []
    pool = candidates(ticker)
    for (lang, text), scores in zip(pool, engine.predict([text for _, text in pool])):
        probs = sorted(scores.sentiment.probs.values(), reverse=True)
        if probs[0] - probs[1] < 0.05:
            continue
        (negative if scores.sentiment.label == "negative" else other).append((lang, text))
    return negative, other


def script(model_dir: Path, ticker: str, negatives_per_minute: list[int], others_per_minute: int) -> list[dict[str, Any]]:
    negative, other = texts_by_label(model_dir, ticker)
    items = []
    for minute, count in enumerate(negatives_per_minute):
        for n in range(count + others_per_minute):
            lang, text = negative.pop() if n < count else other.pop()
            items.append({
                "id": f"{ticker}-{minute}-{n}",
                "source": "newswire",
                "lang": lang,
                "text": text,
                "published_at": (T0 + timedelta(minutes=minute, seconds=2 * n + 1)).isoformat(),
            })
    return items


@pytest.fixture
def receiver():
    r = Receiver(failures=1)
    yield r
    r.close()


@pytest.mark.worker_env(**RECEIVER_ENV, FINPULSE_WEBHOOK_RETRY_INITIAL_S="0.2")
def test_a_scripted_spike_fires_exactly_the_expected_alerts(
    pipeline: Pipeline, tiny_model: Path, receiver: Receiver
) -> None:
    rule = TypeAdapter(Rule).validate_python
    spike_tsla, spike_any, ratio_any, secret = asyncio.run(_subscriptions(pipeline, rule, receiver.url))
    # TSLA: 2 negatives and 1 other a minute for 10 minutes, then 12 negatives (and 1 other) in minute 10.
    # KO, the quiet ticker: 2 negatives and 1 other every minute, minute 10 included.
    tsla = script(tiny_model, "TSLA", [2] * 10 + [12], others_per_minute=1)
    quiet = script(tiny_model, "KO", [2] * 11, others_per_minute=1)
    baseline = [i for i in tsla + quiet if not i["id"].startswith("TSLA-10-")]
    pipeline.send_items(baseline)
    pipeline.wait_stored(len(baseline))  # the baseline is in before the spike arrives
    pipeline.send_items([i for i in tsla if i["id"].startswith("TSLA-10-")])
    pipeline.wait_stored(len(tsla) + len(quiet))

    spike_at = T0 + timedelta(minutes=10)
    expected = {
        (spike_tsla, "TSLA", spike_at): ("spike", 12.0, 10.0),  # z = (12 - mean 2) / max(std 0, 1)
        (spike_any, "TSLA", spike_at): ("spike", 12.0, 10.0),
        (ratio_any, "TSLA", spike_at): ("threshold", 12 / 13, 12 / 13),
    }
    wait_for(lambda: len(_alerts(pipeline)) >= len(expected), 30, "alerts in SQL", pipeline.worker)
    stored = {
        (r["subscription_id"], r["key"], r["window_start"]): (r["rule"], r["observed"], r["value"])
        for r in _alerts(pipeline)
    }
    assert stored.keys() == expected.keys()
    for key, (rule_name, observed, value) in expected.items():
        assert stored[key][0] == rule_name
        assert stored[key][1:] == (pytest.approx(observed), pytest.approx(value))

    published = [Alert.model_validate(m) for m in pipeline.read("alerts", len(expected), timeout=30)]
    assert sorted(a.alert_id for a in published) == sorted(r["alert_id"] for r in _alerts(pipeline))
    assert {(a.key_type, a.key, a.window_s) for a in published} == {("entity", "TSLA", 60)}

    # The webhook: the receiver fails the first POST, the retry is delivered, and it verifies.
    wait_for(lambda: len(receiver.requests) >= 2, 30, "webhook retry", pipeline.worker)
    headers, body = receiver.requests[-1]
    assert verify_signature(secret, headers, body)
    assert json.loads(body)["subscription_id"] == spike_tsla
    assert {h["Idempotency-Key"] for h, _ in receiver.requests} == {json.loads(body)["alert_id"]}
    wait_for(lambda: _delivery(pipeline, spike_tsla) == "delivered", 30, "delivery recorded", pipeline.worker)

    # A restart and a redelivery of the whole stream add no alert, publish nothing new, POST nothing new.
    pipeline.worker.stop()
    pipeline.worker.start()
    pipeline.send_items(tsla + quiet)
    wait_for(lambda: pipeline.worker.metric("finpulse_store_rows_total") >= len(tsla + quiet), 60, "redelivery stored")
    assert len(_alerts(pipeline)) == len(expected)
    assert len(pipeline.read("alerts", 0, timeout=5)) == len(expected)
    assert len(receiver.requests) == 2
    assert assert_aggregates_match_documents(pipeline.db) > 0


async def _subscriptions(pipeline: Pipeline, rule: Any, hook: str) -> tuple[str, str, str, str]:
    specs = [
        SubscriptionSpec(name="TSLA negative spike", key_type="entity", key="TSLA", rule=rule(SPIKE), webhook_url=hook),
        SubscriptionSpec(name="any ticker spike", key_type="entity", key="*", rule=rule(SPIKE)),
        SubscriptionSpec(
            name="mostly negative",
            key_type="entity",
            key="*",
            rule=rule({"type": "threshold", "metric": "negative_ratio", "value": 0.9, "min_count": 13}),
        ),
    ]
    async with open_repository(pipeline.db.url, SecretBox([SECRET_KEY])) as repository:
        created = [await repository.create(spec) for spec in specs]
    return created[0].id, created[1].id, created[2].id, created[0].webhook_secret or ""


def _alerts(pipeline: Pipeline) -> list[Any]:
    return pipeline.db.fetch("SELECT * FROM alerts ORDER BY fired_at")


def _delivery(pipeline: Pipeline, subscription_id: str) -> str:
    return pipeline.db.fetch(f"SELECT delivery FROM alerts WHERE subscription_id = '{subscription_id}'")[0][0]
