"""JSON log lines carry their context; consumer lag is high-water mark minus what is done."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config

from worker.entrypoints.consumer_lag import lag_of
from worker.logs import logging_config, record_fields, stage_context
from worker.stages.records import Record


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    config = logging_config("info", fmt, "ns1")
    stream = io.StringIO()
    config["handlers"]["console"]["stream"] = stream
    logging.config.dictConfig(config)
    return logging.getLogger("finpulse.test"), stream


def test_json_lines_carry_namespace_stage_and_message_position() -> None:
    log, stream = _capture("json")
    record = Record(value=b"x", key=None, topic="ns1.docs", partition=3, offset=42, timestamp_ms=None)

    async def in_stage() -> None:
        stage_context("persist")
        log.warning("refused %s", "doc-1", extra=record_fields(record))

    asyncio.run(in_stage())
    log.info("outside any stage")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "refused doc-1"
    assert first["level"] == "WARNING" and first["logger"] == "finpulse.test" and first["time"]
    assert (first["namespace"], first["stage"], first["topic"], first["partition"], first["offset"]) == (
        "ns1", "persist", "ns1.docs", 3, 42
    )
    assert second["namespace"] == "ns1" and "stage" not in second and "topic" not in second


def test_text_lines_stay_plain() -> None:
    log, stream = _capture("text")
    log.warning("plain %d", 7)
    line = stream.getvalue().strip()
    assert line.endswith("WARNING finpulse.test: plain 7")
    assert not line.startswith("{")


def test_lag_is_highwater_minus_done_where_both_are_known() -> None:
    highwaters = {"a": 100, "b": 50, "c": None, "d": 10}
    done = {"a": 40, "b": 50, "c": 3, "d": None}
    assert lag_of(highwaters, done) == {"a": 60, "b": 0}
    assert lag_of({"a": 5}, {"a": 9}) == {"a": 0}  # a stale high-water mark never gives a negative lag
