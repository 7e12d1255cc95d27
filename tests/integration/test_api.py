"""The HTTP API against a real, migrated PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from worker.entrypoints.api import create_api
from worker.settings import Settings

from .conftest import Database

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC_HOOK = "http://93.184.216.34/hook"  # a global address literal: no DNS needed
SPIKE = {"type": "spike", "metric": "negative_count", "threshold": 3}


def _client(database: Database, **overrides: Any) -> TestClient:
    """A client of the API on `database`; `overrides` are FINPULSE_* settings, read as the process would."""
    environ = {"FINPULSE_DATABASE_URL": database.url, "FINPULSE_API_TOKEN": TOKEN, **overrides}
    return TestClient(create_api(Settings.from_env(environ, env_file=None)))


@pytest.fixture
def client(database: Database) -> Iterator[TestClient]:
    with _client(database) as c:  # one event loop for the engine's pool
        yield c


def spec(**changes: Any) -> dict[str, Any]:
    return {"name": "TSLA bad news", "key_type": "entity", "key": "TSLA", "rule": SPIKE, "window_s": 60, **changes}


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_health_without_a_store_is_503() -> None:
    settings = Settings.from_env({"FINPULSE_DATABASE_URL": "postgresql+asyncpg://finpulse@127.0.0.1:1/none"}, env_file=None)
    with TestClient(create_api(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("SQL store unreachable")


def test_subscription_round_trip(client: TestClient) -> None:
    assert client.get("/subscriptions").json() == []

    created = client.post("/subscriptions", json=spec(cooldown_s=300), headers=AUTH)
    assert created.status_code == 201, created.text
    body = created.json()
    sid = body["id"]
    assert body["name"] == "TSLA bad news" and body["key"] == "TSLA" and body["cooldown_s"] == 300
    assert body["rule"] == {**SPIKE, "method": "zscore", "baseline_windows": 12, "min_count": 5, "threshold": 3.0}
    assert body["webhook_url"] is None and body["webhook_secret"] is None and body["enabled"] is True

    assert client.get(f"/subscriptions/{sid}").json() == body
    assert client.get("/subscriptions").json() == [body]

    threshold = {"type": "threshold", "metric": "negative_ratio", "value": 0.6, "min_count": 10}
    replaced = client.put(f"/subscriptions/{sid}", json=spec(name="renamed", rule=threshold, window_s=300, enabled=False), headers=AUTH)
    assert replaced.status_code == 200, replaced.text
    new = replaced.json()
    assert (new["id"], new["name"], new["window_s"], new["enabled"]) == (sid, "renamed", 300, False)
    assert new["rule"] == {**threshold, "op": ">="}
    assert new["created_at"] == body["created_at"] and new["updated_at"] > body["updated_at"]
    assert client.get(f"/subscriptions/{sid}").json() == new

    assert client.delete(f"/subscriptions/{sid}", headers=AUTH).status_code == 204
    assert client.get(f"/subscriptions/{sid}").status_code == 404
    assert client.get("/subscriptions").json() == []


def test_unknown_ids_are_404(client: TestClient) -> None:
    for response in (
        client.get("/subscriptions/nope"),
        client.put("/subscriptions/nope", json=spec(), headers=AUTH),
        client.delete("/subscriptions/nope", headers=AUTH),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "no subscription 'nope'"}


def test_webhook_secret_is_shown_once(client: TestClient, database: Database) -> None:
    created = client.post("/subscriptions", json=spec(webhook_url=PUBLIC_HOOK), headers=AUTH).json()
    secret = created["webhook_secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    sid = created["id"]
    assert client.get(f"/subscriptions/{sid}").json()["webhook_secret"] is None
    assert [s["webhook_secret"] for s in client.get("/subscriptions").json()] == [None]
    # Replacing keeps the secret and does not show it again; the workers still have it.
    replaced = client.put(f"/subscriptions/{sid}", json=spec(webhook_url=PUBLIC_HOOK, cooldown_s=60), headers=AUTH).json()
    assert replaced["webhook_secret"] is None
    assert database.fetch(f"SELECT webhook_secret FROM subscriptions WHERE id = '{sid}'")[0][0] == secret

    given = "a-secret-of-my-own-choosing"
    mine = client.post("/subscriptions", json=spec(webhook_url=PUBLIC_HOOK, webhook_secret=given), headers=AUTH).json()
    assert mine["webhook_secret"] == given
    assert client.get(f"/subscriptions/{mine['id']}").json()["webhook_secret"] is None


def test_writes_need_the_token(client: TestClient) -> None:
    missing = client.post("/subscriptions", json=spec())
    assert missing.status_code == 401
    assert missing.json()["detail"].startswith("missing API token")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    for headers in ({"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {TOKEN}x"}):
        wrong = client.post("/subscriptions", json=spec(), headers=headers)
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "invalid API token"}

    sid = client.post("/subscriptions", json=spec(), headers=AUTH).json()["id"]
    assert client.put(f"/subscriptions/{sid}", json=spec()).status_code == 401
    assert client.delete(f"/subscriptions/{sid}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(f"/subscriptions/{sid}").status_code == 200  # reads are open


def test_writes_are_disabled_without_a_configured_token(database: Database) -> None:
    with _client(database, FINPULSE_API_TOKEN="") as client:
        for response in (
            client.post("/subscriptions", json=spec(), headers=AUTH),
            client.post("/subscriptions", json=spec()),
            client.delete("/subscriptions/x", headers=AUTH),
        ):
            assert response.status_code == 503
            assert response.json() == {"detail": "writes are disabled: set FINPULSE_API_TOKEN"}
        assert client.get("/subscriptions").json() == []


def _errors(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    assert response.status_code == 422, response.text
    return [(tuple(e["loc"]), e["msg"]) for e in response.json()["detail"]]


def test_malformed_subscriptions_are_refused(client: TestClient) -> None:
    unknown_rule = _errors(client.post("/subscriptions", json=spec(rule={"type": "moon-phase"}), headers=AUTH))
    assert unknown_rule[0][0] == ("body", "rule")
    assert "'moon-phase'" in unknown_rule[0][1] and "'threshold', 'spike', 'instant'" in unknown_rule[0][1]

    assert _errors(client.post("/subscriptions", json=spec(cooldown_s=-1), headers=AUTH)) == [
        (("body", "cooldown_s"), "Input should be greater than or equal to 0")
    ]
    assert _errors(client.post("/subscriptions", json=spec(colour="red"), headers=AUTH)) == [
        (("body", "colour"), "Extra inputs are not permitted")
    ]
    assert _errors(client.post("/subscriptions", json=spec(rule={**SPIKE, "threshold": "high"}), headers=AUTH))[0][0] == (
        "body", "rule", "spike", "threshold"
    )
    not_json = client.post("/subscriptions", content=b"{name: nope", headers={**AUTH, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"

    window = client.post("/subscriptions", json=spec(window_s=120), headers=AUTH)
    assert window.status_code == 422
    assert window.json() == {"detail": "window_s=120 is not one of the worker's windows [60, 300, 3600] (FINPULSE_WINDOWS)"}

    global_key = client.post("/subscriptions", json=spec(key_type="global", key="TSLA"), headers=AUTH)
    assert global_key.status_code == 422 and "single key '*'" in global_key.json()["detail"]

    # Numbers the workers could not compute with: a cooldown past any date, NaN in a rule.
    assert client.post("/subscriptions", json=spec(cooldown_s=10**12), headers=AUTH).status_code == 422
    nan_rule = b'{"name": "n", "key_type": "entity", "key": "TSLA", "window_s": 60, ' \
        b'"rule": {"type": "threshold", "metric": "volume", "value": NaN}}'
    nan = client.post("/subscriptions", content=nan_rule, headers={**AUTH, "Content-Type": "application/json"})
    assert nan.status_code == 422, nan.text

    assert client.get("/subscriptions").json() == []


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://10.0.0.5/", "http://169.254.169.254/", "http://[::1]:8080/x"])
def test_webhooks_to_internal_addresses_are_refused(database: Database, url: str) -> None:
    with _client(database) as client:
        refused = client.post("/subscriptions", json=spec(webhook_url=url), headers=AUTH)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "private, loopback, link-local or reserved" in detail and "FINPULSE_WEBHOOK_ALLOW_PRIVATE" in detail
        sid = client.post("/subscriptions", json=spec(), headers=AUTH).json()["id"]
        assert client.put(f"/subscriptions/{sid}", json=spec(webhook_url=url), headers=AUTH).status_code == 422
        assert client.get(f"/subscriptions/{sid}").json()["webhook_url"] is None
    with _client(database, FINPULSE_WEBHOOK_ALLOW_PRIVATE="true") as client:
        allowed = client.post("/subscriptions", json=spec(webhook_url=url), headers=AUTH)
        assert allowed.status_code == 201, allowed.text
        assert allowed.json()["webhook_secret"]


def test_webhook_scheme_is_checked(client: TestClient) -> None:
    refused = client.post("/subscriptions", json=spec(webhook_url="ftp://example.com/x"), headers=AUTH)
    assert _errors(refused)[0][0] == ("body", "webhook_url")


AGGREGATE_ROWS = [
    # window_s, window_start, key, model_version, negative, neutral, positive
    (60, "2026-11-28 10:00:00+00", "TSLA", "m1", 1, 1, 1),
    (60, "2026-11-28 10:01:00+00", "TSLA", "m1", 3, 0, 1),
    (60, "2026-11-28 10:02:00+00", "TSLA", "m1", 0, 2, 0),
    (60, "2026-11-28 10:01:00+00", "TSLA", "m2", 2, 1, 1),
    (300, "2026-11-28 10:00:00+00", "TSLA", "m1", 4, 3, 2),
    (60, "2026-11-28 10:01:00+00", "AAPL", "m1", 9, 9, 9),
]


def _insert_aggregates(database: Database) -> None:
    values = []
    for window_s, start, key, model, neg, neu, pos in AGGREGATE_ROWS:
        volume = neg + neu + pos
        score = 0.5 * pos - 0.5 * neg
        values.append(
            f"({window_s}, '{start}', 'entity', '{key}', '{model}', {neg}, {neu}, {pos}, {volume}, {score}, {score / volume})"
        )
    database.fetch(
        "INSERT INTO aggregates (window_s, window_start, key_type, key, model_version, count_negative, count_neutral,"
        " count_positive, volume, score_sum, mean_score) VALUES " + ", ".join(values)
    )


def _points(client: TestClient, **params: Any) -> list[tuple[int, str, str, int]]:
    response = client.get("/aggregates", params={"key_type": "entity", "key": "TSLA", **params})
    assert response.status_code == 200, response.text
    return [(p["window_s"], p["window_start"][11:16], p["model_version"], p["count_negative"]) for p in response.json()]


def test_aggregates_series(client: TestClient, database: Database) -> None:
    _insert_aggregates(database)
    assert _points(client) == [(60, "10:00", "m1", 1), (60, "10:01", "m1", 3), (60, "10:01", "m2", 2), (60, "10:02", "m1", 0)]
    assert _points(client, model_version="m1") == [(60, "10:00", "m1", 1), (60, "10:01", "m1", 3), (60, "10:02", "m1", 0)]
    assert _points(client, window_s=300) == [(300, "10:00", "m1", 4)]
    assert _points(client, since="2026-11-28T10:01:00Z", until="2026-11-28T10:02:00Z") == [
        (60, "10:01", "m1", 3), (60, "10:01", "m2", 2)
    ]
    assert _points(client, since="2026-11-28T11:01:00+01:00") == [(60, "10:01", "m1", 3), (60, "10:01", "m2", 2), (60, "10:02", "m1", 0)]
    assert _points(client, since="2026-11-28T10:02:00") == [(60, "10:02", "m1", 0)]  # no offset: UTC
    assert _points(client, limit=2) == [(60, "10:01", "m2", 2), (60, "10:02", "m1", 0)]  # the latest, oldest first
    assert _points(client, key="NOPE") == []

    point = client.get("/aggregates", params={"key_type": "entity", "key": "AAPL"}).json()[0]
    assert point == {
        "window_s": 60, "window_start": "2026-11-28T10:01:00Z", "key_type": "entity", "key": "AAPL", "model_version": "m1",
        "count_negative": 9, "count_neutral": 9, "count_positive": 9, "volume": 27, "score_sum": 0.0, "mean_score": 0.0,
    }


def test_aggregates_refuse_bad_queries(client: TestClient) -> None:
    window = client.get("/aggregates", params={"key_type": "entity", "key": "TSLA", "window_s": 120})
    assert window.status_code == 422
    assert window.json() == {"detail": "window_s=120 is not one of the worker's windows [60, 300, 3600] (FINPULSE_WINDOWS)"}
    assert _errors(client.get("/aggregates", params={"key_type": "entity"})) == [(("query", "key"), "Field required")]
    assert _errors(client.get("/aggregates", params={"key_type": "planet", "key": "x"}))[0][0] == ("query", "key_type")
    assert _errors(client.get("/aggregates", params={"key_type": "entity", "key": "x", "since": "yesterday"}))[0][0] == (
        "query", "since"
    )


def _insert_alert(database: Database, alert_id: str, subscription_id: str, key: str, fired_at: str) -> None:
    database.fetch(
        "INSERT INTO alerts (alert_id, subscription_id, subscription_name, rule, metric, observed, value, threshold,"
        " key_type, key, window_s, window_start, window_end, model_version, volume, fired_at, published, delivery,"
        " delivery_attempts) VALUES"
        f" ('{alert_id}', '{subscription_id}', 'name of {subscription_id}', 'spike', 'negative_count', 9, 4.5, 3,"
        f" 'entity', '{key}', 60, '2026-11-28 10:00:00+00', '2026-11-28 10:01:00+00', 'm1', 12, '{fired_at}',"
        " false, 'none', 0)"
    )


def test_alerts(client: TestClient, database: Database) -> None:
    _insert_alert(database, "a1", "s1", "TSLA", "2026-11-28 10:01:05+00")
    _insert_alert(database, "a2", "s1", "AAPL", "2026-11-28 10:03:05+00")
    _insert_alert(database, "a3", "s2", "TSLA", "2026-11-28 10:02:05+00")

    def ids(**params: Any) -> list[str]:
        response = client.get("/alerts", params=params)
        assert response.status_code == 200, response.text
        return [a["alert_id"] for a in response.json()]

    assert ids() == ["a2", "a3", "a1"]
    assert ids(subscription_id="s1") == ["a2", "a1"]
    assert ids(key_type="entity", key="TSLA") == ["a3", "a1"]
    assert ids(since="2026-11-28T10:02:05Z") == ["a2", "a3"]
    assert ids(limit=1) == ["a2"]
    assert ids(key_type="topic") == []

    first = client.get("/alerts", params={"limit": 1}).json()[0]
    assert first["subscription_name"] == "name of s1" and first["value"] == 4.5 and first["volume"] == 12
    assert first["window_end"] == "2026-11-28T10:01:00Z" and first["doc_id"] is None
    assert "delivery" not in first  # outbox state is not part of an alert

    assert client.get("/alerts", params={"limit": 1001}).status_code == 422
    assert client.get("/alerts", params={"limit": 0}).status_code == 422


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"]) == {"/health", "/subscriptions", "/subscriptions/{subscription_id}", "/aggregates", "/alerts"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "FINPULSE_API_TOKEN; needed for POST, PUT and DELETE"
    }
    item = doc["paths"]["/subscriptions/{subscription_id}"]
    for operation in (doc["paths"]["/subscriptions"]["post"], item["put"], item["delete"]):
        assert operation["security"] == [{"HTTPBearer": []}]
        assert "401" in operation["responses"] and "503" in operation["responses"]
    for operation in (doc["paths"]["/subscriptions"]["get"], item["get"], doc["paths"]["/aggregates"]["get"]):
        assert "security" not in operation
    schemas = doc["components"]["schemas"]
    assert {"SubscriptionSpec", "Subscription", "WindowAggregate", "Alert", "SpikeRule"} <= set(schemas)
    assert doc["paths"]["/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/Alert"
    }
    assert client.get("/docs").status_code == 200
