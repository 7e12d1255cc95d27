"""Aggregation keys and tumbling windows: plain functions shared by the stages and the store.

Every scored document counts once under each of its keys: the global key, its source,
its language, its topic and each entity it mentions, in every window size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.news import ScoredItem

GLOBAL = ("global", "*")


def keys_of(item: ScoredItem) -> list[tuple[str, str]]:
    keys = [GLOBAL, ("source", item.source), ("lang", item.lang or "und"), ("topic", item.topic.label)]
    keys.extend(("entity", entity) for entity in item.entities)
    return keys


def as_utc(moment: datetime) -> datetime:
    """A time without an offset is UTC: producers may send one, and SQLite hands stored times back that way."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def epoch_seconds(moment: datetime) -> int:
    return int(as_utc(moment).timestamp())


def window_start(event_ts: int, window_s: int) -> int:
    """Start (epoch seconds) of the tumbling window of `window_s` seconds holding event_ts."""
    return event_ts - event_ts % window_s


def as_datetime(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class WindowStats:
    """Counts of one key in one window, as the brute-force reference computes them."""

    negative: int = 0
    neutral: int = 0
    positive: int = 0
    score_sum: float = 0.0

    @property
    def volume(self) -> int:
        return self.negative + self.neutral + self.positive

    def add(self, label: str, score: float) -> None:
        setattr(self, label, getattr(self, label) + 1)
        self.score_sum += score


def brute_force(
    documents: Iterable[tuple[str, datetime, str, float, list[tuple[str, str]]]], window_s: int
) -> dict[tuple[int, str, str, str], WindowStats]:
    """Reference aggregation: (model version, event time, label, score, keys) -> stats per window and key."""
    result: dict[tuple[int, str, str, str], WindowStats] = {}
    for version, event_time, label, score, keys in documents:
        start = window_start(epoch_seconds(event_time), window_s)
        for key_type, key in keys:
            result.setdefault((start, key_type, key, version), WindowStats()).add(label, score)
    return result
