"""The model registry on SQLite: one live version, atomic promotions, workers that follow them, and the
readers (API, report) that show the live version by default."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engines.training.tiny import build_tiny_checkpoint
from worker import metrics
from worker.entrypoints.api import create_api
from worker.entrypoints.live_model import LiveModel, load_configured
from worker.settings import EngineSettings, Settings
from worker.store.database import make_engine, upgrade
from worker.store.models import ModelRegistry, UnknownModel
from worker.store.reports import open_reports

TOKEN = "bootstrap-token-of-at-least-32-characters"


@pytest.fixture
def url(tmp_path: Path) -> str:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade(database_url)
    return database_url


def test_one_live_version_moved_in_one_transaction(url: str) -> None:
    async def run() -> None:
        database = make_engine(url)
        registry = ModelRegistry(database)
        try:
            assert await registry.live() is None
            assert (await registry.ensure_live("m1", "/models/m1")).model_version == "m1"
            assert (await registry.ensure_live("m2", "/models/m2")).model_version == "m1"  # the first worker's wins
            assert (await registry.register("m2", "/models/m2")).role == "shadow"
            previous, live = await registry.promote("m2")
            assert (previous, live.model_version, live.model_dir) == ("m1", "m2", "/models/m2")
            assert await registry.promote("m2") == ("m2", live)  # again: nothing changes
            with pytest.raises(UnknownModel):
                await registry.promote("m3")
            assert [(m.model_version, m.role) for m in await registry.list()] == [("m1", "retired"), ("m2", "live")]
            with pytest.raises(IntegrityError):  # the schema itself refuses a second live version
                async with database.begin() as conn:
                    await conn.execute(text("UPDATE model_versions SET role = 'live' WHERE model_version = 'm1'"))
        finally:
            await database.dispose()

    asyncio.run(run())


def test_a_worker_follows_a_promotion_and_keeps_serving_through_a_broken_one(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EngineSettings(backend="torch", model_poll_s=0.1)
    old_dir, new_dir = build_tiny_checkpoint(tmp_path / "old"), build_tiny_checkpoint(tmp_path / "new", seed=1)
    old = load_configured(settings, str(old_dir))

    async def run() -> None:
        database = make_engine(url)
        registry = ModelRegistry(database)
        live = LiveModel(old, str(old_dir), settings, url)
        try:
            await live.follow(registry)  # an empty registry: this worker's model becomes live
            assert (await registry.live()).model_dir == str(old_dir.resolve())  # type: ignore[union-attr]
            new = load_configured(settings, str(new_dir))
            await registry.register(new.model_version, str(new_dir))
            await registry.promote(new.model_version)
            await live.follow(registry)
            assert live.engine.model_version == new.model_version != old.model_version
            assert metrics.MODEL_INFO.labels(new.model_version, "torch")._value.get() == 1
            assert (old.model_version, "torch") not in [s.labels.values() for s in metrics.MODEL_INFO.collect()[0].samples]

            await registry.register("tiny-broken", str(tmp_path / "missing"))
            await registry.promote("tiny-broken")
            with caplog.at_level(logging.ERROR):
                await live.follow(registry)
            assert live.engine.model_version == new.model_version  # still serving
            assert "cannot load the live model tiny-broken" in caplog.text
        finally:
            await database.dispose()

    asyncio.run(run())


def _aggregates(url: str) -> None:
    async def run() -> None:
        database = make_engine(url)
        async with database.begin() as conn:
            for version, negative in (("m1", 1), ("m2", 2)):
                await conn.execute(text(
                    "INSERT INTO aggregates (window_s, window_start, key_type, key, model_version, count_negative,"
                    " count_neutral, count_positive, volume, score_sum, mean_score, updated_at) VALUES (60,"
                    f" '2026-11-28 10:00:00', 'entity', 'TSLA', '{version}', {negative}, 0, 0, {negative}, -1.0, -0.5,"
                    " '2026-11-28 10:00:00')"
                ))
                for n in range(negative):  # m2 holds more documents
                    await conn.execute(text(
                        "INSERT INTO document_keys (doc_id, model_version, key_type, key, event_ts, sentiment_label,"
                        f" sentiment_score) VALUES ('d{n}', '{version}', 'global', '*', 1795860000, 'negative', -1.0)"
                    ))
        await database.dispose()

    asyncio.run(run())


def test_the_api_and_the_report_show_the_live_version_unless_told(url: str) -> None:
    _aggregates(url)
    settings = Settings.from_env({"FINPULSE_DATABASE_URL": url, "FINPULSE_API_TOKEN": TOKEN}, env_file=None)

    def versions(client: TestClient, **params: str) -> list[str]:
        answer = client.get("/aggregates", params={"key_type": "entity", "key": "TSLA", **params})
        assert answer.status_code == 200, answer.text
        return [point["model_version"] for point in answer.json()]

    async def report_versions() -> list[str]:
        async with open_reports(url) as store:
            return [name for name, _ in await store.model_versions(0, 2**40)]

    with TestClient(create_api(settings), base_url="http://localhost", headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert versions(client) == ["m1", "m2"]  # nothing registered: every version, as before
        assert asyncio.run(report_versions()) == ["m2", "m1"]  # the most documents first

        async def make_live() -> None:
            database = make_engine(url)
            await ModelRegistry(database).ensure_live("m1", "/models/m1")
            await database.dispose()

        asyncio.run(make_live())
        assert versions(client) == ["m1"]
        assert versions(client, model_version="m2") == ["m2"]
        assert asyncio.run(report_versions()) == ["m1", "m2"]
