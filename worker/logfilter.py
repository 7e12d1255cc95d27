"""Keeps a repeating log line from flooding the log while a dependency is down.

aiokafka logs every failed reconnect at ERROR, about 90 lines a second during a broker
restart; one line per `every_s`, with the count of what it held back, says the same.
"""

from __future__ import annotations

import logging
import time


class Throttle(logging.Filter):
    """Lets each message (by its format string) through at most once per `every_s` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}  # format string -> (last passed, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        passed_at, held = self._seen.get(key, (float("-inf"), 0))
        if now - passed_at < self.every_s:
            self._seen[key] = (passed_at, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.every_s:.0f} s]"
        self._seen[key] = (now, 0)
        return True
