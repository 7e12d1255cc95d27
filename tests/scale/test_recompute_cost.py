"""What one persist transaction pays, under the global key's lock, as the current hour fills up.

Every persist batch touches the `global` key (every document counts there), so every batch's
transaction takes that key's advisory lock and recomputes its windows from `document_keys`
(worker/store/aggregates.py): for the 1-hour window, from every document stored in that hour so far.
This runs the persist stage's own recompute (`AggregateRepository.recompute`) for a batch that touches
the newest minute of an hour holding 10k, 100k and 1M documents, on PostgreSQL, and records the
wall-clock time from the lock to the commit (median of 5) in docs/scaling/recompute.json; it asserts only that the windows it
computes hold every document. docs/scaling.md turns the times into the ceiling they set.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import pytest

from tests.integration.conftest import Database, _pg_execute
from tests.scale import report
from worker.store.database import make_engine
from worker.store.unit_of_work import unit_of_work

pytestmark = pytest.mark.integration
HOUR = 1_798_000_000 - 1_798_000_000 % 3600  # an hour's start, epoch s
VOLUMES = (10_000, 100_000, 1_000_000)
VERSION = "scale-v1"


async def _recompute(url: str) -> tuple[float, dict[int, int]]:
    """One persist-like transaction over the global key: lock, recompute 60 s, 300 s and 3600 s windows."""
    key = ("global", "*", VERSION)
    last = HOUR + 3599
    touched = {w: {key: {last - last % w}} for w in (60, 300, 3600)}
    engine = make_engine(url)
    try:
        async with unit_of_work(engine) as uow:  # connected, transaction begun: time from here to the commit
            started = time.perf_counter()
            await uow.aggregates.lock([key])
            rows = await uow.aggregates.recompute(touched)
        return time.perf_counter() - started, {r["window_s"]: r["volume"] for r in rows}
    finally:
        await engine.dispose()


def test_recompute_cost_grows_with_the_hour(database: Database) -> None:
    results = []
    stored = 0
    for volume in VOLUMES:
        # Documents spread over the whole hour (7919 is prime to 3600): `volume - stored` more key rows of the global key.
        asyncio.run(_pg_execute(database.dsn, f"""
            INSERT INTO document_keys (doc_id, model_version, key_type, key, event_ts, sentiment_label, sentiment_score)
            SELECT 'd' || n, '{VERSION}', 'global', '*', {HOUR} + (n::bigint * 7919) % 3600,
                   (ARRAY['negative', 'neutral', 'positive'])[1 + n % 3], (n % 100) / 100.0
            FROM generate_series({stored}, {volume - 1}) AS n;
            ANALYZE document_keys;
        """))
        stored = volume
        times = []
        for _ in range(5):
            seconds, volumes = asyncio.run(_recompute(database.url))
            times.append(seconds)
        in_hour = database.count(f"SELECT count(*) FROM document_keys WHERE event_ts BETWEEN {HOUR} AND {HOUR + 3599}")
        assert volumes[3600] == in_hour  # the recompute saw every document of the hour
        assert 0 < volumes[60] < in_hour
        results.append({"documents_in_hour": in_hour, "median_s": round(statistics.median(times), 4),
                        "times_s": [round(t, 4) for t in times]})
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    (report.RESULTS / "recompute.json").write_text(json.dumps(results, indent=1) + "\n")
