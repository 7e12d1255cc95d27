"""One back-off for every retry in the worker: the store, the outbox's webhooks and the cache.

Exponential with full jitter (as Dramatiq's `compute_backoff` and the AWS architecture
note on back-off describe): the n-th wait is uniform in [initial/2, min(max, initial * 2^n)],
so workers that failed together do not retry together, and the wait never collapses
to zero. Errors that waiting cannot fix are declared, once, in `is_permanent`.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc


@dataclass(frozen=True)
class Backoff:
    initial_s: float
    max_s: float
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry)."""
        ceiling = min(self.max_s, self.initial_s * 2 ** min(attempt, 62))
        if not self.jitter:
            return ceiling
        floor = min(self.initial_s / 2, ceiling)
        return (rng or random).uniform(floor, ceiling)


# SQLSTATE classes that describe the rows, not the database's health: 22 data exception,
# 23 integrity constraint violation. PostgreSQL names them; SQLite raises these types.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23")


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: the data itself is refused. Everything else is transient."""
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError, ValueError, TypeError, OverflowError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(state, str) and state[:2] in _PERMANENT_SQLSTATE_CLASSES:
            return True
        return isinstance(exc.orig, (sqlite3.DataError, sqlite3.IntegrityError))
    return False
