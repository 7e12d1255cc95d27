"""`finpulse subscriptions add | list | rm`, `finpulse tokens` and `finpulse secrets` against a real, migrated
PostgreSQL database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from worker.entrypoints.cli import cli
from worker.security.secret_box import SecretBox, generate_key

from .conftest import Database

pytestmark = pytest.mark.integration

SPIKE = '{"type": "spike", "metric": "negative_count", "threshold": 3}'
KEY = generate_key()


def run(database: Database, *args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"FINPULSE_DATABASE_URL": database.url, "FINPULSE_SECRET_KEYS": KEY, **env})


def listed(database: Database) -> list[dict[str, Any]]:
    result = run(database, "subscriptions", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_list_rm(database: Database) -> None:
    assert listed(database) == []
    added = run(
        database, "subscriptions", "add", "--name", "TSLA spikes", "--key-type", "entity", "--key", "TSLA",
        "--window", "300", "--rule", SPIKE, "--cooldown", "600", "--webhook", "https://93.184.216.34/hook/t0ken?k=v",
    )
    assert added.exit_code == 0, added.output
    created = json.loads(added.stdout)
    assert len(created["webhook_secret"]) >= 32  # shown this once
    assert created["webhook_url"] == "https://93.184.216.34/hook/…"  # redacted, the query too
    assert created["id"] in added.stderr

    [shown] = listed(database)
    assert shown == {**created, "webhook_secret": None}
    assert (shown["name"], shown["key_type"], shown["key"], shown["window_s"], shown["cooldown_s"]) == (
        "TSLA spikes", "entity", "TSLA", 300, 600
    )
    assert shown["rule"]["type"] == "spike" and shown["rule"]["threshold"] == 3.0 and shown["enabled"] is True

    table = run(database, "subscriptions", "list", COLUMNS="200")
    assert table.exit_code == 0, table.output
    assert "TSLA spikes" in table.stdout and "entity:TSLA" in table.stdout and "negative_count zscore >= 3" in table.stdout
    assert "t0ken" not in table.stdout

    assert run(database, "subscriptions", "rm", created["id"]).exit_code == 0
    assert listed(database) == []
    gone = run(database, "subscriptions", "rm", created["id"])
    assert gone.exit_code == 1 and f"no subscription '{created['id']}'" in gone.stderr


def test_disabled_global(database: Database) -> None:
    rule = '{"type": "threshold", "metric": "negative_ratio", "value": 0.7, "min_count": 20}'
    added = run(database, "subscriptions", "add", "--name", "market", "--key-type", "global", "--rule", rule, "--disabled")
    assert added.exit_code == 0, added.output
    [shown] = listed(database)
    assert (shown["key"], shown["window_s"], shown["enabled"], shown["webhook_url"]) == ("*", 60, False, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", '{"type": "moon-phase"}'], "rule: Input tag 'moon-phase' found using 'type' does not match"),
        (["--rule", "{not json"], "--rule is not JSON"),
        (["--rule", '{"type": "spike", "threshold": -1}'], "rule.spike.threshold: Input should be greater than 0"),
        (["--rule", SPIKE, "--window", "120"], "window_s=120 is not one of the worker's windows [60, 300, 3600]"),
        (["--rule", SPIKE, "--cooldown", "-5"], "cooldown_s: Input should be greater than or equal to 0"),
        (["--rule", SPIKE, "--key-type", "planet"], "key_type: Input should be 'global', 'entity'"),
        (["--rule", SPIKE, "--webhook", "https://169.254.169.254/"], "resolves to 169.254.169.254, a private"),
        (["--rule", SPIKE, "--webhook", "https://[64:ff9b::a9fe:a9fe]/"], "(which carries 169.254.169.254), a private"),
        (["--rule", SPIKE, "--webhook", "http://93.184.216.34/"], "must be https, not 'http'"),
    ],
)
def test_invalid_input_exits_2(database: Database, args: list[str], message: str) -> None:
    base = ["subscriptions", "add", "--name", "n", "--key-type", "entity", "--key", "TSLA"]
    result = run(database, *base, *args)
    assert result.exit_code == 2, result.output
    assert "invalid subscription:" in result.stderr
    assert message in " ".join(result.stderr.split())  # rich wraps long lines
    assert listed(database) == []


def test_private_webhook_allowed_when_configured(database: Database) -> None:
    args = ["subscriptions", "add", "--name", "n", "--key-type", "lang", "--key", "de", "--rule", SPIKE]
    added = run(database, *args, "--webhook", "http://10.0.0.5/", FINPULSE_WEBHOOK_ALLOW_PRIVATE="true",
                FINPULSE_WEBHOOK_ALLOW_HTTP="true")
    assert added.exit_code == 0, added.output
    assert listed(database)[0]["webhook_url"] == "http://10.0.0.5/"


def test_a_webhook_needs_a_secret_key(database: Database) -> None:
    args = ["subscriptions", "add", "--name", "n", "--key-type", "lang", "--key", "de", "--rule", SPIKE]
    refused = run(database, *args, "--webhook", "https://93.184.216.34/", FINPULSE_SECRET_KEYS="")
    assert refused.exit_code == 2
    assert "set FINPULSE_SECRET_KEYS" in " ".join(refused.stderr.split())
    assert listed(database) == []
    assert run(database, *args, FINPULSE_SECRET_KEYS="").exit_code == 0  # no webhook: no secret to keep


def test_rotating_the_secret_key(database: Database) -> None:
    args = ["subscriptions", "add", "--name", "n", "--key-type", "lang", "--rule", SPIKE, "--webhook", "https://93.184.216.34/"]
    created = json.loads(run(database, *args).stdout)
    secret = created["webhook_secret"]
    [old] = [r[0] for r in database.fetch(f"SELECT webhook_secret FROM subscriptions WHERE id = '{created['id']}'")]
    assert old.startswith("fernet:") and secret not in old
    legacy = json.loads(run(database, *args).stdout)["id"]  # as migration 0004 leaves a secret when no key is set
    database.fetch(f"UPDATE subscriptions SET webhook_secret = 'plain:legacy-secret-1234' WHERE id = '{legacy}'")

    generated = CliRunner().invoke(cli, ["secrets", "generate-key"])
    new_key = generated.stdout.strip()
    both = f"{new_key},{KEY}"
    assert SecretBox(both.split(",")).open(old) == secret  # before rotation: the old key still opens it
    rotated = run(database, "secrets", "rotate", FINPULSE_SECRET_KEYS=both)
    assert rotated.exit_code == 0, rotated.output
    assert "2 webhook secret(s) encrypted under the first key" in rotated.stderr
    stored = dict(database.fetch("SELECT id, webhook_secret FROM subscriptions"))
    assert stored[created["id"]] != old and SecretBox([new_key]).open(stored[created["id"]]) == secret
    assert SecretBox([new_key]).open(stored[legacy]) == "legacy-secret-1234"
    with pytest.raises(ValueError):
        SecretBox([KEY]).open(stored[created["id"]])

    unopened = run(database, "secrets", "rotate", FINPULSE_SECRET_KEYS=generate_key())
    assert unopened.exit_code == 1 and "2 secret(s) no configured key opens" in unopened.stderr
    assert run(database, "secrets", "rotate", FINPULSE_SECRET_KEYS="").exit_code == 2
    malformed = run(database, "secrets", "rotate", FINPULSE_SECRET_KEYS="not-a-key")
    assert malformed.exit_code == 2 and "not a Fernet key" in malformed.stderr and "not-a-key" not in malformed.stderr


def test_tokens_create_list_revoke(database: Database) -> None:
    made = run(database, "tokens", "create", "grafana")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("fp_") and "shown this once" in made.stderr and "(read)" in made.stderr
    assert run(database, "tokens", "create", "grafana").exit_code == 1  # the name is taken while active
    assert run(database, "tokens", "create", "x", "--scope", "admin").exit_code == 2

    [shown] = json.loads(run(database, "tokens", "list", "--json").stdout)
    assert (shown["name"], shown["scopes"], shown["revoked_at"]) == ("grafana", ["read"], None)
    assert token.startswith(shown["prefix"]) and token not in json.dumps(shown)
    table = run(database, "tokens", "list", COLUMNS="200")
    assert "grafana" in table.stdout and token not in table.stdout

    assert run(database, "tokens", "revoke", "grafana").exit_code == 0
    assert run(database, "tokens", "revoke", "grafana").exit_code == 1  # no active token of that name now
    again = run(database, "tokens", "create", "grafana", "--scope", "read", "--scope", "write")
    assert again.exit_code == 0 and "(read, write)" in again.stderr
    revoked, active = json.loads(run(database, "tokens", "list", "--json").stdout)
    assert revoked["revoked_at"] is not None and active["revoked_at"] is None
    assert run(database, "tokens", "revoke", active["id"]).exit_code == 0  # by id
