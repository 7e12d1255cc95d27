"""The pipeline bench's deployment: what it refuses before making anything, and which settings its report hides."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.entrypoints.bench_deployment import Deployment, _is_secret, shown_settings
from worker.settings import Settings

POSTGRES = {"FINPULSE_DATABASE_URL": "postgresql+asyncpg://bench:pw@127.0.0.1:1/finpulse"}


@pytest.mark.parametrize("workers", [0, 5])
def test_workers_must_fit_the_partitions(workers: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 1 and the topics' 4 partitions"):
        Deployment({**POSTGRES, "FINPULSE_TOPIC_PARTITIONS": "4"}, tmp_path, None, tmp_path / "log", workers)


def test_each_worker_gets_its_own_web_port(tmp_path: Path) -> None:
    deployment = Deployment({**POSTGRES, "FINPULSE_TOPIC_PARTITIONS": "4"}, tmp_path, None, tmp_path / "log", 4)
    assert len(set(deployment.ports)) == 4


def test_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        Deployment({"FINPULSE_DATABASE_URL": "sqlite+aiosqlite:///x.db"}, tmp_path, None, tmp_path / "log")


def test_report_hides_secrets_by_whole_word_only() -> None:
    assert [name for name in Settings().to_env() if _is_secret(name)] == [
        "FINPULSE_KAFKA_SASL_PASSWORD", "FINPULSE_SECRET_KEYS", "FINPULSE_API_TOKEN",
    ]
    shown = shown_settings(Settings.from_env(POSTGRES, env_file=None))
    assert shown["FINPULSE_TOKEN_BUDGET"] == "512"
    assert shown["FINPULSE_DATABASE_URL"] == "postgresql+asyncpg://bench:***@127.0.0.1:1/finpulse"
