"""Each stage on its own, without Kafka: records in, results and rejects (with their records) out."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from typer.testing import CliRunner

from engines import load_engine
from engines.training.tiny import build_tiny_checkpoint
from schemas.news import DeadLetter, NewsItem, ScoredItem
from worker.backoff import Backoff, is_permanent
from worker.entrypoints.cli import cli
from worker.settings import CacheSettings, Settings
from worker.stages.cache import ScoreCache
from worker.stages.decode import decode, decode_scored
from worker.stages.entities import Watchlist
from worker.stages.records import Record
from worker.stages.score import ScoreStage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


def records(*values: bytes) -> list[Record]:
    return [Record(value=v, key=f"k{n}".encode(), topic="t.docs", partition=1, offset=n, timestamp_ms=1_764_000_000_000 + n)
            for n, v in enumerate(values)]


def test_decode_keeps_order_and_turns_bad_input_into_rejects_that_know_their_record() -> None:
    result = decode(records(b'{"text": "Apple jumps", "lang": "en"}', b"{oops", b'{"text": ""}', b'{"text": "BYD falls"}'),
                    max_text_chars=100)
    assert [a.value.text for a in result.accepted] == ["Apple jumps", "BYD falls"]
    assert [a.record.offset for a in result.accepted] == [0, 3]
    assert [(r.record.offset, r.reason, r.stage) for r in result.rejected] == [(1, "invalid_json", "ingest"), (2, "empty_text", "ingest")]
    letter = DeadLetter.model_validate_json(result.rejected[0].dead_letter().model_dump_json())
    assert (letter.topic, letter.partition, letter.offset, letter.timestamp_ms) == ("t.docs", 1, 1, 1_764_000_000_001)
    assert base64.b64decode(letter.value_b64) == b"{oops" and base64.b64decode(letter.key_b64 or "") == b"k1"


def test_decode_scored_rejects_what_is_not_a_scored_item() -> None:
    result = decode_scored(records(b'{"id": "x"}'))
    assert result.accepted == [] and [(r.reason, r.stage) for r in result.rejected] == [("invalid_scored_item", "persist")]


class FailsOn:
    """An engine that raises on one text: the stage must reject that document alone."""

    def __init__(self, engine, poison: str) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.poison = engine, poison
        self.backend, self.model_version, self.max_length = engine.backend, engine.model_version, engine.max_length

    def predict(self, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        if self.poison in texts:
            raise RuntimeError("the model broke")
        return self.engine.predict(texts)


async def test_score_stage_rejects_only_the_text_the_model_fails_on(tiny: Path) -> None:
    engine = FailsOn(load_engine(tiny, "torch"), "poison pill")
    stage = ScoreStage(engine, ScoreCache(CacheSettings(url=None), prefix="t:"), Watchlist.load(), None)
    decoded = decode(records(b'{"text": "Tesla $TSLA rallies", "lang": "en"}', b'{"text": "poison pill"}',
                             b'{"text": "Sony sinks"}'), max_text_chars=100)
    try:
        result = await stage(decoded.accepted)
    finally:
        await stage.close()
    assert [a.record.offset for a in result.accepted] == [0, 2]
    assert [(r.record.offset, r.reason, r.stage) for r in result.rejected] == [(1, "engine_error", "score")]
    first, second = result.values
    assert first.entities == ["TSLA"] and first.lang == "en" and second.lang == "und"  # no detector: und
    assert first.event_time == datetime.fromtimestamp(1_764_000_000, UTC)  # no published_at: the Kafka time


def test_backoff_grows_with_jitter_within_its_bounds() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    rng = random.Random(1)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 8, 8]):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert 0.5 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > 0.1 * ceiling  # jittered, not one value
    assert Backoff(1.0, 8.0, jitter=False).delay(2) == 4.0
    assert Backoff(1.0, 8.0).delay(10_000) <= 8.0  # no overflow after a long outage


def test_permanent_errors_are_the_rows_fault_not_the_databases() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert is_permanent(sa_exc.DBAPIError("INSERT", {}, PgError("22021")))  # invalid byte sequence (NUL)
    assert is_permanent(sa_exc.DBAPIError("INSERT", {}, PgError("23505")))  # unique violation
    assert is_permanent(OverflowError("date value out of range"))
    assert not is_permanent(sa_exc.DBAPIError("INSERT", {}, PgError("57P01")))  # admin shutdown: retry
    assert not is_permanent(sa_exc.OperationalError("INSERT", {}, ConnectionRefusedError()))
    assert not is_permanent(OSError("connection reset"))


def test_settings_read_flat_names_into_sections_and_back() -> None:
    settings = Settings.from_env(
        {"FINPULSE_WINDOWS": "300,60,300", "FINPULSE_REDIS_URL": "", "FINPULSE_BATCH_MAX": "32", "OTHER": "x"},
        env_file=None,
    )
    assert settings.store.windows == [60, 300] and settings.cache.url is None and settings.kafka.batch_max == 32
    assert Settings.from_env(settings.to_env(), env_file=None) == settings
    with pytest.raises(ValueError, match="FINPULSE|batch_max|less than or equal"):
        Settings.from_env({"FINPULSE_BATCH_MAX": "100000"}, env_file=None)


def test_finpulse_score_prints_the_streams_scored_items_and_dead_letters(tiny: Path, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"id": "a", "text": "Siemens senkt die Prognose", "lang": "de", "tickers": ["SIE.DE"]}) + "\n"
        + "{not json\n\n"
        + json.dumps({"id": "b", "text": "$AAPL jumps 5%", "lang": "en"}) + "\n",
        encoding="utf-8",
    )
    environ = {"FINPULSE_MODEL_DIR": str(tiny), "FINPULSE_BACKEND": "torch", "FINPULSE_DETECT_LANGUAGE": "false"}
    result = CliRunner().invoke(cli, ["score", str(items), "--no-cache"], env=environ)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    scored = [ScoredItem.model_validate_json(line) for line in lines]
    assert [(s.id, s.lang, s.entities, s.cached) for s in scored] == [("a", "de", ["SIE.DE"], False), ("b", "en", ["AAPL"], False)]
    letters = [DeadLetter.model_validate_json(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [(d.reason, d.offset) for d in letters] == [("invalid_json", 2)]  # offset: the line number
    assert "scored 2, rejected 1" in result.stderr
    assert all(NewsItem.model_validate(s.model_dump(include=set(NewsItem.model_fields) - {"schema_version"})) for s in scored)
