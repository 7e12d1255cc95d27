"""`finpulse subscriptions add | list | rm` against a real, migrated PostgreSQL database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from worker.entrypoints.cli import cli

from .conftest import Database

pytestmark = pytest.mark.integration

SPIKE = '{"type": "spike", "metric": "negative_count", "threshold": 3}'


def run(database: Database, *args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"FINPULSE_DATABASE_URL": database.url, **env})


def listed(database: Database) -> list[dict[str, Any]]:
    result = run(database, "subscriptions", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_list_rm(database: Database) -> None:
    assert listed(database) == []
    added = run(
        database, "subscriptions", "add", "--name", "TSLA spikes", "--key-type", "entity", "--key", "TSLA",
        "--window", "300", "--rule", SPIKE, "--cooldown", "600", "--webhook", "http://93.184.216.34/hook",
    )
    assert added.exit_code == 0, added.output
    created = json.loads(added.stdout)
    assert len(created["webhook_secret"]) >= 32  # shown this once
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
        (["--rule", SPIKE, "--webhook", "http://169.254.169.254/"], "resolves to 169.254.169.254, a private"),
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
    added = run(database, *args, "--webhook", "http://10.0.0.5/", FINPULSE_WEBHOOK_ALLOW_PRIVATE="true")
    assert added.exit_code == 0, added.output
    assert listed(database)[0]["webhook_url"] == "http://10.0.0.5/"
