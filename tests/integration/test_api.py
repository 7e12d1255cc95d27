"""The HTTP API against a real, migrated PostgreSQL database: tokens and scopes, the body limit, allowed
hosts, redacted webhook URLs and encrypted webhook secrets, and the routes themselves."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from worker.entrypoints.api import create_api
from worker.entrypoints.cli import cli
from worker.security.secret_box import SecretBox, generate_key
from worker.settings import Settings

from .conftest import Database, _free_port, wait_for

pytestmark = pytest.mark.integration

TOKEN = "bootstrap-token-of-at-least-32-characters"  # FINPULSE_API_TOKEN: every scope
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = generate_key()  # FINPULSE_SECRET_KEYS
PUBLIC_HOOK = "https://93.184.216.34/hook"  # a global address literal: no DNS needed
SPIKE = {"type": "spike", "metric": "negative_count", "threshold": 3}


def _settings(database: Database, **overrides: Any) -> Settings:
    """FINPULSE_* settings on `database`, read as the process would."""
    environ = {"FINPULSE_DATABASE_URL": database.url, "FINPULSE_API_TOKEN": TOKEN, "FINPULSE_SECRET_KEYS": KEY, **overrides}
    return Settings.from_env(environ, env_file=None)


def _client(database: Database, headers: dict[str, str] | None = AUTH, **overrides: Any) -> TestClient:
    """A client of the API on `database`, as localhost, sending `headers` (the bootstrap token) with every request."""
    return TestClient(create_api(_settings(database, **overrides)), base_url="http://localhost", headers=headers)


@pytest.fixture
def client(database: Database) -> Iterator[TestClient]:
    with _client(database) as c:  # one event loop for the engine's pool
        yield c


@pytest.fixture
def anonymous(database: Database) -> Iterator[TestClient]:
    with _client(database, headers=None) as c:
        yield c


def make_token(database: Database, name: str, *scopes: str) -> str:
    """`finpulse tokens create`: the token is the one line on standard output."""
    args = ["tokens", "create", name, *(f"--scope={scope}" for scope in scopes)]
    result = CliRunner().invoke(cli, args, env={"FINPULSE_DATABASE_URL": database.url})
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def spec(**changes: Any) -> dict[str, Any]:
    return {"name": "TSLA bad news", "key_type": "entity", "key": "TSLA", "rule": SPIKE, "window_s": 60, **changes}


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_health_without_a_store_is_503() -> None:
    settings = Settings.from_env({"FINPULSE_DATABASE_URL": "postgresql+asyncpg://finpulse@127.0.0.1:1/none"}, env_file=None)
    with TestClient(create_api(settings), base_url="http://localhost") as client:
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


def test_webhook_secret_is_shown_once_and_stored_encrypted(client: TestClient, database: Database) -> None:
    created = client.post("/subscriptions", json=spec(webhook_url=PUBLIC_HOOK), headers=AUTH).json()
    secret = created["webhook_secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    sid = created["id"]
    assert client.get(f"/subscriptions/{sid}").json()["webhook_secret"] is None
    assert [s["webhook_secret"] for s in client.get("/subscriptions").json()] == [None]
    stored = database.fetch(f"SELECT webhook_secret FROM subscriptions WHERE id = '{sid}'")[0][0]
    assert stored.startswith("fernet:") and secret not in stored
    assert SecretBox([KEY]).open(stored) == secret
    # Replacing keeps the secret and does not show it again; the workers still have it.
    replaced = client.put(f"/subscriptions/{sid}", json=spec(webhook_url=PUBLIC_HOOK, cooldown_s=60), headers=AUTH).json()
    assert replaced["webhook_secret"] is None
    assert database.fetch(f"SELECT webhook_secret FROM subscriptions WHERE id = '{sid}'")[0][0] == stored

    given = "a-secret-of-my-own-choosing"
    mine = client.post("/subscriptions", json=spec(webhook_url=PUBLIC_HOOK, webhook_secret=given), headers=AUTH).json()
    assert mine["webhook_secret"] == given
    assert client.get(f"/subscriptions/{mine['id']}").json()["webhook_secret"] is None
    again = client.put(f"/subscriptions/{mine['id']}", json=spec(webhook_url=PUBLIC_HOOK, webhook_secret=given + "-2")).json()
    assert again["webhook_secret"] == given + "-2"  # a new one is shown once
    stored = database.fetch(f"SELECT webhook_secret FROM subscriptions WHERE id = '{mine['id']}'")[0][0]
    assert SecretBox([KEY]).open(stored) == given + "-2"


def test_without_a_secret_key_webhooks_are_refused(database: Database) -> None:
    with _client(database, FINPULSE_SECRET_KEYS="") as client:
        refused = client.post("/subscriptions", json=spec(webhook_url=PUBLIC_HOOK))
        assert refused.status_code == 503
        detail = refused.json()["detail"]
        assert "FINPULSE_SECRET_KEYS" in detail and "finpulse secrets generate-key" in detail
        assert client.post("/subscriptions", json=spec()).status_code == 201  # no webhook, no secret
        assert len(client.get("/subscriptions").json()) == 1


def test_webhook_urls_are_shown_redacted(client: TestClient, database: Database) -> None:
    url = "https://alice:pa55word@93.184.216.34/hooks/finpulse?apikey=k3y"
    created = client.post("/subscriptions", json=spec(webhook_url=url))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    for shown in (created.json(), client.get(f"/subscriptions/{sid}").json(), client.get("/subscriptions").json()[0]):
        assert shown["webhook_url"] == "https://93.184.216.34/hooks/…"
    for response in (created, client.get("/subscriptions")):
        assert "pa55word" not in response.text and "k3y" not in response.text and "alice" not in response.text
    assert database.fetch("SELECT webhook_url FROM subscriptions")[0][0] == url  # the workers still have all of it


def test_every_route_but_health_needs_a_token(anonymous: TestClient) -> None:
    for response in (
        anonymous.get("/subscriptions"),
        anonymous.get("/subscriptions/x"),
        anonymous.get("/aggregates", params={"key_type": "entity", "key": "TSLA"}),
        anonymous.get("/alerts"),
        anonymous.get("/nowhere"),
        anonymous.get("/alerts", headers={"Authorization": "Basic dXNlcjpwYXNz"}),
    ):
        assert response.status_code == 401, response.url
        assert response.json()["detail"].startswith("missing API token")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200


def test_writes_need_the_token(anonymous: TestClient) -> None:
    missing = anonymous.post("/subscriptions", json=spec())
    assert missing.status_code == 401
    assert missing.json()["detail"].startswith("missing API token")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    for headers in (bearer("wrong-token"), bearer(TOKEN + "x"), bearer(TOKEN[:-1]), bearer("fp_" + "x" * 43)):
        wrong = anonymous.post("/subscriptions", json=spec(), headers=headers)
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "invalid API token"}
        assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    sid = anonymous.post("/subscriptions", json=spec(), headers=AUTH).json()["id"]
    assert anonymous.put(f"/subscriptions/{sid}", json=spec()).status_code == 401
    assert anonymous.delete(f"/subscriptions/{sid}", headers=bearer("nope")).status_code == 401
    assert anonymous.get(f"/subscriptions/{sid}", headers=AUTH).status_code == 200


def test_tokens_have_scopes(anonymous: TestClient, database: Database) -> None:
    reader = make_token(database, "reader")  # read, the default
    writer = make_token(database, "writer", "write")
    both = make_token(database, "both", "read", "write")
    assert reader.startswith("fp_") and len(reader) >= 40
    created = anonymous.post("/subscriptions", json=spec(), headers=bearer(writer))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert anonymous.get("/subscriptions", headers=bearer(reader)).status_code == 200
    assert anonymous.get("/alerts", headers=bearer(both)).status_code == 200
    for response in (
        anonymous.post("/subscriptions", json=spec(), headers=bearer(reader)),
        anonymous.delete(f"/subscriptions/{sid}", headers=bearer(reader)),
    ):
        assert response.status_code == 403
        assert response.json() == {"detail": "this token lacks the 'write' scope"}
        assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="write"'
    forbidden = anonymous.get("/subscriptions", headers=bearer(writer))
    assert forbidden.status_code == 403 and forbidden.json() == {"detail": "this token lacks the 'read' scope"}
    assert anonymous.delete(f"/subscriptions/{sid}", headers=bearer(both)).status_code == 204


def test_a_revoked_token_is_refused(anonymous: TestClient, database: Database) -> None:
    token = make_token(database, "grafana", "read")
    assert anonymous.get("/alerts", headers=bearer(token)).status_code == 200
    revoked = CliRunner().invoke(cli, ["tokens", "revoke", "grafana"], env={"FINPULSE_DATABASE_URL": database.url})
    assert revoked.exit_code == 0, revoked.output
    refused = anonymous.get("/alerts", headers=bearer(token))
    assert refused.status_code == 401 and refused.json() == {"detail": "invalid API token"}
    assert anonymous.get("/alerts", headers=bearer(make_token(database, "grafana", "read"))).status_code == 200  # name free


def test_tokens_are_stored_hashed(anonymous: TestClient, database: Database) -> None:
    token = make_token(database, "ci", "read", "write")
    assert anonymous.get("/alerts", headers=bearer(token)).status_code == 200
    [row] = database.fetch("SELECT * FROM api_tokens")
    assert all(token not in str(value) for value in row.values())
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(row["prefix"]) and len(row["prefix"]) <= 8
    assert row["last_used_at"] is not None and row["revoked_at"] is None


def test_only_database_tokens_without_a_bootstrap_token(database: Database) -> None:
    token = make_token(database, "ops", "read")
    with _client(database, headers=None, FINPULSE_API_TOKEN="") as client:
        assert client.get("/subscriptions", headers=AUTH).status_code == 401
        assert client.get("/subscriptions", headers=bearer(token)).json() == []


def test_a_short_bootstrap_token_stops_the_api(database: Database) -> None:
    with pytest.raises(ValueError, match="FINPULSE_API_TOKEN has 12 characters; use at least 32"):
        create_api(_settings(database, FINPULSE_API_TOKEN="s3cret-token"))
    result = CliRunner().invoke(cli, ["api"], env={"FINPULSE_DATABASE_URL": database.url, "FINPULSE_API_TOKEN": "short"})
    assert result.exit_code == 2 and "use at least 32" in result.stderr


def test_only_allowed_hosts_are_answered(database: Database) -> None:
    with _client(database) as client:
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert client.get("/subscriptions", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", "attacker.example:8000", "localhost.attacker.example", "127.0.0.2"):
            assert client.get("/health", headers={"Host": host}).status_code == 400, host
            assert client.post("/subscriptions", json=spec(), headers={"Host": host}).status_code == 400
    with _client(database, FINPULSE_API_ALLOWED_HOSTS="api.internal, *.finpulse.example") as client:
        assert client.get("/health", headers={"Host": "api.internal"}).status_code == 200
        assert client.get("/health", headers={"Host": "eu.finpulse.example:443"}).status_code == 200
        assert client.get("/health", headers={"Host": "localhost"}).status_code == 400


@pytest.fixture
def served(database: Database) -> Iterator[int]:
    """The API on a real socket (uvicorn), where a body is read only when the app asks for it; returns the port."""
    port = _free_port()
    config = uvicorn.Config(create_api(_settings(database)), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the API listening")
    yield port
    server.should_exit = True
    thread.join(30)


def _answer(port: int, head: str, *body: bytes) -> int:
    """Send a request head and part of a body; return the status of the answer.

    The rest of a declared body is never sent: a server that waited for it would never answer,
    and the socket's timeout would fail the test.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode())
        for part in body:
            sock.sendall(part)
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed without an answer: {received!r}"
            received += chunk
    return int(received.split(b" ", 2)[1])


def _head(content_length: int | None, token: str | None = None) -> str:
    lines = ["POST /subscriptions HTTP/1.1", "Host: localhost", "Content-Type: application/json"]
    lines.append(f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked")
    lines += [f"Authorization: Bearer {token}"] if token else []
    return "\r\n".join(lines) + "\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_bodies_are_limited_and_not_read_without_a_token(served: int) -> None:
    declared = 50 * 1024 * 1024
    assert _answer(served, _head(declared), b"{}") in (401, 413)  # answered with 50 MB still to come
    assert _answer(served, _head(declared, TOKEN), b"{}") == 413
    assert _answer(served, _head(None), _chunk(b"x" * 4096)) == 401  # streamed, no length, no token: not read
    assert _answer(served, _head(None, TOKEN), *[_chunk(b"x" * 32_768)] * 3) == 413  # streamed past 64 KiB
    body = b'{"name": "n", "key_type": "global", "rule": {"type": "instant"}}'
    assert _answer(served, _head(len(body), TOKEN), body) == 201  # within the limit: read as before


def test_invalid_input_is_not_echoed(client: TestClient) -> None:
    huge = "x" * 20_000
    for body in (spec(name=huge), {**spec(), huge: 1}, spec(rule={"type": huge})):
        response = client.post("/subscriptions", json=body)
        assert response.status_code == 422
        assert len(response.content) < 2000, response.text[:300]


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


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hook", "http://10.0.0.5/", "http://169.254.169.254/", "http://[::1]:8080/x",
     "https://[64:ff9b::7f00:1]/", "https://[2002:7f00:1::]/", "https://[::127.0.0.1]/", "https://[::ffff:10.0.0.5]/"],
)
def test_webhooks_to_internal_addresses_are_refused(database: Database, url: str) -> None:
    plain_http = {"FINPULSE_WEBHOOK_ALLOW_HTTP": "true", "FINPULSE_WEBHOOK_ALLOWED_PORTS": "80,443,8080"}
    with _client(database, **plain_http) as client:
        refused = client.post("/subscriptions", json=spec(webhook_url=url))
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "private, loopback, link-local or reserved" in detail and "FINPULSE_WEBHOOK_ALLOW_PRIVATE" in detail
        sid = client.post("/subscriptions", json=spec()).json()["id"]
        assert client.put(f"/subscriptions/{sid}", json=spec(webhook_url=url)).status_code == 422
        assert client.get(f"/subscriptions/{sid}").json()["webhook_url"] is None
    with _client(database, FINPULSE_WEBHOOK_ALLOW_PRIVATE="true", **plain_http) as client:
        allowed = client.post("/subscriptions", json=spec(webhook_url=url))
        assert allowed.status_code == 201, allowed.text
        assert allowed.json()["webhook_secret"]


def test_webhook_scheme_and_port_are_checked(client: TestClient) -> None:
    refused = client.post("/subscriptions", json=spec(webhook_url="ftp://example.com/x"))
    assert _errors(refused)[0][0] == ("body", "webhook_url")
    plain = client.post("/subscriptions", json=spec(webhook_url="http://93.184.216.34/hook"))
    assert plain.status_code == 422 and "FINPULSE_WEBHOOK_ALLOW_HTTP" in plain.json()["detail"]
    port = client.post("/subscriptions", json=spec(webhook_url="https://93.184.216.34:6379/"))
    assert port.status_code == 422 and "FINPULSE_WEBHOOK_ALLOWED_PORTS" in port.json()["detail"]


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


def test_openapi_document(anonymous: TestClient) -> None:
    doc = anonymous.get("/openapi.json").json()
    assert set(doc["paths"]) == {"/health", "/subscriptions", "/subscriptions/{subscription_id}", "/aggregates", "/alerts"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "A token from `finpulse tokens create`, or FINPULSE_API_TOKEN"
    }
    item = doc["paths"]["/subscriptions/{subscription_id}"]
    for operation in (doc["paths"]["/subscriptions"]["post"], item["put"], item["delete"], doc["paths"]["/subscriptions"]["get"],
                      item["get"], doc["paths"]["/aggregates"]["get"], doc["paths"]["/alerts"]["get"]):
        assert operation["security"] == [{"HTTPBearer": []}]
        assert {"401", "403"} <= set(operation["responses"])
    assert "security" not in doc["paths"]["/health"]["get"]
    schemas = doc["components"]["schemas"]
    assert {"SubscriptionSpec", "Subscription", "WindowAggregate", "Alert", "SpikeRule"} <= set(schemas)
    assert doc["paths"]["/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/Alert"
    }
    assert anonymous.get("/docs").status_code == 200
