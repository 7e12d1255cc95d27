"""The log throttle: one line per interval for a repeating message, with what it held back."""

from __future__ import annotations

import logging

import pytest

from worker.logfilter import Throttle


def test_repeats_are_held_back_and_counted(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("worker.logfilter.time.monotonic", lambda: clock[0])
    logger = logging.getLogger("test.throttle")
    logger.addFilter(Throttle(every_s=10))
    with caplog.at_level(logging.ERROR, logger="test.throttle"):
        for n in range(50):
            logger.error("Unable connect to node with id %s: %s", 1, f"attempt {n}")
            clock[0] += 0.1
        logger.error("another message")
        clock[0] += 6  # 11 s after the first line
        logger.error("Unable connect to node with id %s: %s", 1, "again")
    assert [r.getMessage() for r in caplog.records] == [
        "Unable connect to node with id 1: attempt 0",
        "another message",
        "Unable connect to node with id 1: again [49 more like this in the last 10 s]",
    ]
