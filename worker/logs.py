"""Log lines as text for people or as JSON for log pipelines (`FINPULSE_LOG_FORMAT`).

Every line carries the namespace, and the stage whose task logged it (each Faust agent
names itself with `stage_context`); a line about one message passes `extra=record_fields(record)`
and gains its topic, partition and offset. JSON lines are python-json-logger's: one object
per line with `time`, `level`, `logger`, `message` and those fields, so a log pipeline can
filter by partition without parsing prose.
"""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any

_STAGE: ContextVar[str | None] = ContextVar("finpulse_stage", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stage_context(stage: str) -> None:
    """Name the stage of the current task (and of the tasks it starts) in its log lines."""
    _STAGE.set(stage)


def record_fields(record: Any) -> dict[str, Any]:
    """`extra=` for a line about one Kafka message (anything with topic, partition and offset)."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class Context(logging.Filter):
    """Adds `namespace` and, when a stage task logged it, `stage` to every record."""

    def __init__(self, namespace: str) -> None:
        super().__init__()
        self.namespace = namespace

    def filter(self, record: logging.LogRecord) -> bool:
        record.namespace = self.namespace
        if not hasattr(record, "stage"):
            stage = _STAGE.get()
            if stage is not None:
                record.stage = stage
        return True


def logging_config(level: str, fmt: str, namespace: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the CLI and for Faust's worker (which takes it as `logging_config`)."""
    if fmt == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "timestamp": False,
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": Context, "namespace": namespace}},
        "formatters": {"finpulse": formatter},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "finpulse", "filters": ["context"]},
        },
        "root": {"level": level.upper(), "handlers": ["console"]},
    }


def setup(level: str, fmt: str = "text", namespace: str = "finpulse") -> None:
    logging.config.dictConfig(logging_config(level, fmt, namespace))
