"""Alert rules on the embedded SQLite store: what fires, once, and what a cooldown or a replay changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from sqlalchemy import select, update

from schemas.alerts import Alert, Rule, SubscriptionSpec
from schemas.news import Prediction, ScoredItem
from schemas.tables import AlertRow
from tests.webhook_receiver import Receiver
from worker.delivery.outbox import AlertOutbox
from worker.delivery.webhooks import (
    WebhookRefused,
    WebhookUnresolvable,
    check_webhook_url,
    pinned,
    post_alert,
    verify_signature,
)
from worker.security.secret_box import SecretBox, generate_key
from worker.settings import StoreSettings, WebhookSettings
from worker.stages.persist import PersistStage
from worker.stages.rules import spike_score
from worker.store.database import make_engine, upgrade
from worker.store.subscriptions import SubscriptionRepository

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)  # a window boundary for 60, 300 and 3600 s
RULE = TypeAdapter(Rule)
KEY = generate_key()
# What a test needs to reach tests/webhook_receiver.py: plain http to 127.0.0.1 on a random port.
LOCAL_RECEIVER = WebhookSettings(allow_private=True, allow_http=True, allowed_ports=["1024-65535"], secret_keys=[KEY])


def item(n: int, *, minute: int, entity: str = "TSLA", label: str = "negative", p: float = 0.9) -> ScoredItem:
    rest = (1 - p) / 2
    probs = {"negative": rest, "neutral": rest, "positive": rest, label: p}
    return ScoredItem(
        id=f"{entity}-{minute}-{n}",
        source="news",
        text=f"doc {n}",
        text_hash="0" * 64,
        lang="en",
        entities=[entity],
        sentiment=Prediction(label=label, probs=probs),
        topic=Prediction(label="earnings", probs={"earnings": 1.0}),
        sentiment_score=probs["positive"] - probs["negative"],
        event_time=T0 + timedelta(minutes=minute, seconds=n % 60),
        model_version="m1",
        scored_at=datetime.now(UTC),
        latency_ms=1.0,
        cached=False,
    )


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await asyncio.to_thread(upgrade, url)
    database = make_engine(url)
    yield PersistStage(database, StoreSettings(url=url, windows=[60, 300]))
    await database.dispose()


async def subscribe(store: PersistStage, rule: dict[str, Any], **fields: Any):
    spec = SubscriptionSpec(name="test", key_type="entity", key="TSLA", rule=RULE.validate_python(rule), **fields)
    repository = SubscriptionRepository(store.database, SecretBox([KEY]))
    created = await repository.create(spec)
    return await repository.list(), created


async def alerts(store: PersistStage) -> list[AlertRow]:
    async with store.database.connect() as conn:
        return list((await conn.execute(select(AlertRow).order_by(AlertRow.window_start))).all())


async def test_threshold_fires_once_per_window_when_the_window_qualifies(store: PersistStage) -> None:
    subs, _ = await subscribe(store, {"type": "threshold", "metric": "negative_ratio", "value": 0.5, "min_count": 4})
    await store.write([item(n, minute=0) for n in range(3)], subs)  # 3 documents: below min_count
    assert await alerts(store) == []
    batch = [item(3, minute=0)] + [item(n, minute=1, label="positive") for n in range(4)]
    await store.write(batch, subs)
    await store.write(batch, subs)  # redelivered: nothing new
    await store.write([item(4, minute=0)], subs)  # the window grows: still one alert
    [alert] = await alerts(store)
    assert (alert.key_type, alert.key, alert.window_start.replace(tzinfo=UTC)) == ("entity", "TSLA", T0)
    assert (alert.observed, alert.volume, alert.rule, alert.metric) == (1.0, 4, "threshold", "negative_ratio")
    assert not alert.published and alert.delivery == "none"


async def test_spike_compares_a_window_with_its_baseline(store: PersistStage) -> None:
    rule = {"type": "spike", "metric": "negative_count", "method": "zscore", "threshold": 3, "baseline_windows": 5, "min_count": 6}
    subs, _ = await subscribe(store, rule)
    quiet = [item(n, minute=m) for m in range(5) for n in range(m % 2 + 1)]  # 1 or 2 negatives a minute
    await store.write(quiet, subs)
    await store.write([item(n, minute=5) for n in range(3)], subs)  # 3: above the baseline but under min_count
    assert await alerts(store) == []
    await store.write([item(n, minute=5) for n in range(3, 10)], subs)
    [alert] = await alerts(store)
    expected = spike_score(RULE.validate_python(rule), 10, [1, 2, 1, 2, 1])
    assert alert.window_start.replace(tzinfo=UTC) == T0 + timedelta(minutes=5)
    assert (alert.observed, alert.value) == (10, pytest.approx(expected.value))
    assert alert.baseline_mean == pytest.approx(1.4)


def test_spike_score_keeps_a_flat_baseline_finite() -> None:
    zscore = RULE.validate_python({"type": "spike", "method": "zscore"})
    ratio = RULE.validate_python({"type": "spike", "method": "ratio"})
    assert spike_score(zscore, 10, [2, 2, 2]).value == 8.0  # std 0 counts as 1
    assert spike_score(ratio, 10, [0, 0, 0]).value == 10.0  # mean 0 counts as 1
    assert spike_score(ratio, 10, [4, 6]).value == 2.0


async def test_instant_fires_on_one_confident_negative_document_per_window(store: PersistStage) -> None:
    subs, _ = await subscribe(store, {"type": "instant", "min_confidence": 0.8})
    await store.write([item(0, minute=0, p=0.7), item(1, minute=0, label="positive", p=0.95)], subs)
    assert await alerts(store) == []
    await store.write([item(2, minute=0, p=0.85), item(3, minute=0, p=0.99), item(4, minute=2, p=0.9)], subs)
    fired = await alerts(store)
    assert [(a.doc_id, a.observed) for a in fired] == [("TSLA-0-2", 0.85), ("TSLA-2-4", 0.9)]


async def test_cooldown_suppresses_nearby_windows_of_the_same_key(store: PersistStage) -> None:
    subs, _ = await subscribe(store, {"type": "instant", "min_confidence": 0.5}, cooldown_s=180)
    await store.write([item(0, minute=0), item(0, minute=2), item(0, minute=3)], subs)
    await store.write([item(0, minute=1)], subs)  # late, but within the cooldown of minute 0
    starts = [a.window_start.replace(tzinfo=UTC) for a in await alerts(store)]
    assert starts == [T0, T0 + timedelta(minutes=3)]


async def test_a_replay_stores_alerts_without_delivering_webhooks(store: PersistStage) -> None:
    subs, _ = await subscribe(
        store, {"type": "instant", "min_confidence": 0.5}, webhook_url="https://hooks.example.com/finpulse"
    )
    await store.write([item(0, minute=0)], subs)
    replaying = PersistStage(store.database, StoreSettings(windows=[60, 300]), deliver_webhooks=False)
    await replaying.write([item(0, minute=1)], subs)
    assert [a.delivery for a in await alerts(store)] == ["pending", "suppressed"]


def test_private_and_internal_webhook_addresses_are_refused() -> None:
    public = WebhookSettings(allow_http=True)
    for url in ("http://127.0.0.1/hook", "http://10.1.2.3/", "http://169.254.169.254/latest", "http://[::1]/",
                "http://localhost/", "http://192.168.0.10/", "ftp://example.com/", "http:///nohost"):
        with pytest.raises(WebhookRefused):
            check_webhook_url(url, public)
    assert check_webhook_url("http://127.0.0.1:8080/hook", LOCAL_RECEIVER) is None
    assert check_webhook_url("https://8.8.8.8/hook", WebhookSettings()) == "8.8.8.8"
    with pytest.raises(WebhookUnresolvable):  # refused for a new subscription, retried at delivery
        check_webhook_url("https://no-such-host.invalid/hook", WebhookSettings())


def test_a_webhook_is_posted_to_the_address_that_was_checked() -> None:
    url, headers, extensions = pinned("https://user:pw@hooks.example.com:8443/a/b?x=1", "93.184.216.34")
    assert (url, headers) == ("https://user:pw@93.184.216.34:8443/a/b?x=1", {"Host": "hooks.example.com:8443"})
    assert extensions == {"sni_hostname": "hooks.example.com"}  # the certificate is checked against the name
    url, headers, extensions = pinned("http://hooks.example.com/h", "2606:2800:220:1::1")
    assert (url, headers, extensions) == ("http://[2606:2800:220:1::1]/h", {"Host": "hooks.example.com"}, {})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


async def test_webhooks_are_signed_retried_and_idempotent(store: PersistStage, receiver: Receiver) -> None:
    subs, created = await subscribe(store, {"type": "instant", "min_confidence": 0.5}, webhook_url=receiver.url)
    await store.write([item(0, minute=0)], subs)
    settings = LOCAL_RECEIVER.model_copy(update={"retry_initial_s": 0.01})
    outbox = AlertOutbox(store.database, settings, kafka_url="kafka://127.0.0.1:9", topic="unused")
    try:
        for _ in range(3):
            await outbox.deliver_due()
            async with store.database.begin() as conn:  # skip the back-off wait
                await conn.execute(update(AlertRow).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
        await outbox.deliver_due()  # delivered already: no fourth POST
    finally:
        await outbox.close()
    [alert] = await alerts(store)
    assert (alert.delivery, alert.delivery_attempts) == ("delivered", 3)
    assert len(receiver.requests) == 3
    assert {headers["Idempotency-Key"] for headers, _ in receiver.requests} == {alert.alert_id}
    for headers, body in receiver.requests:
        assert verify_signature(created.webhook_secret or "", headers, body)
        assert not verify_signature("another secret of enough length", headers, body)
        assert Alert.model_validate(json.loads(body)).alert_id == alert.alert_id


async def test_a_webhook_to_a_private_address_is_refused_at_delivery(store: PersistStage, receiver: Receiver) -> None:
    subs, _ = await subscribe(store, {"type": "instant", "min_confidence": 0.5}, webhook_url=receiver.url)
    await store.write([item(0, minute=0)], subs)
    refusing = LOCAL_RECEIVER.model_copy(update={"allow_private": False})
    outbox = AlertOutbox(store.database, refusing, kafka_url="kafka://127.0.0.1:9", topic="unused")
    try:
        await outbox.deliver_due()
    finally:
        await outbox.close()
    [alert] = await alerts(store)
    assert alert.delivery == "failed" and "private" in (alert.last_error or "")
    assert receiver.requests == []


async def test_a_secret_no_key_opens_is_retried_not_sent(store: PersistStage, receiver: Receiver) -> None:
    subs, _ = await subscribe(store, {"type": "instant", "min_confidence": 0.5}, webhook_url=receiver.url)
    await store.write([item(0, minute=0)], subs)
    other_key = LOCAL_RECEIVER.model_copy(update={"secret_keys": [generate_key()]})  # KEY was dropped too soon
    outbox = AlertOutbox(store.database, other_key, kafka_url="kafka://127.0.0.1:9", topic="unused")
    try:
        await outbox.deliver_due()
    finally:
        await outbox.close()
    [alert] = await alerts(store)
    assert (alert.delivery, alert.delivery_attempts) == ("pending", 1)  # the fix is a setting: tried again later
    assert "no key in FINPULSE_SECRET_KEYS decrypts" in (alert.last_error or "")
    assert receiver.requests == []


async def test_the_post_reaches_the_checked_address_with_the_real_host_name(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.failures = 0
    port = receiver.server.server_port
    # As if hooks.test had resolved, and been checked, to the receiver's address.
    monkeypatch.setattr("worker.delivery.webhooks.check_webhook_url", lambda url, settings: "127.0.0.1")
    async with httpx.AsyncClient() as client:
        result = await post_alert(client, f"http://hooks.test:{port}/hook", "s" * 16, "alert-1", b"{}", WebhookSettings())
    assert result.ok, result.detail
    [(headers, _)] = receiver.requests
    assert headers["Host"] == f"hooks.test:{port}" and headers["Idempotency-Key"] == "alert-1"


def test_rules_are_pure_functions_of_windows_history_and_stored_alerts() -> None:
    """No database: the spike's history and the alerts a cooldown looks at are handed in."""
    from schemas.alerts import Subscription
    from worker.stages import rules

    spike = Subscription(id="s1", name="spike", key_type="entity", key="TSLA", window_s=60, cooldown_s=120,
                         rule=RULE.validate_python({"type": "spike", "metric": "negative_count", "threshold": 3,
                                                    "baseline_windows": 3, "min_count": 5}),
                         enabled=True, created_at=T0, updated_at=T0)
    start = int(T0.timestamp())
    window = {"window_s": 60, "window_start": T0, "key_type": "entity", "key": "TSLA", "model_version": "m1",
              "count_negative": 9, "count_neutral": 0, "count_positive": 1, "volume": 10, "mean_score": -0.8}
    windows = rules.by_window([window])
    series = (60, "entity", "TSLA", "m1")
    assert rules.baseline_ranges([spike], windows) == {series: (start - 180, start)}
    history = {series: {start - 60: (2, 1), start - 120: (3, 2)}}  # the third window had no documents
    found = rules.candidates([spike], [], windows, history, now=T0)
    [(sub, row)] = found
    assert row["baseline_mean"] == pytest.approx(1.0) and row["observed"] == 9
    assert rules.cooldown_queries(found) == [("s1", "entity", "TSLA", T0, 120)]
    silenced = {("s1", "entity", "TSLA"): [(T0 - timedelta(seconds=60), "an earlier alert")]}
    assert rules.after_cooldown(found, silenced) == []
    assert rules.after_cooldown(found, {("s1", "entity", "TSLA"): [(T0, row["alert_id"])]}) == [row]  # itself
