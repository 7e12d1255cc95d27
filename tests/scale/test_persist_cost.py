"""What one persist transaction of 500 documents costs as the current hour fills up.

Every persist batch touches the `global` key (every document counts there) and, in a mixed stream,
nearly every source, language and topic key, and its transaction holds those keys' advisory locks
while it updates their windows (worker/store/aggregates.py), so persist transactions run one at a
time across all workers. Whether that work grows with the documents already in a window depends on
how the aggregates are kept: recomputed from `document_keys` (the hour's window rescans the hour),
or incremented by the batch's own counts. This measures it through the persist stage's public entry,
`PersistStage.write`, so it holds for either: an hour on PostgreSQL pre-filled with 10k to 300k
documents' key rows (global, 5 sources, 7 languages, 20 topics) and their windows, then five batches
of 500 new scored documents in the hour's last minute, each timed from the call to the commit. The
median goes to docs/scaling/persist-cost-<implementation>.json; what is asserted is only that every
window still equals a recomputation from the key rows afterwards.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest

from schemas.news import ScoredItem
from tests.integration.conftest import Database, _pg_execute
from tests.scale import report
from worker.entrypoints.bench_persist import TOPICS, scored_items
from worker.samples import SOURCES, TEMPLATES
from worker.settings import StoreSettings
from worker.stages.persist import PersistStage
from worker.store.aggregates import AggregateRepository
from worker.store.database import make_engine

pytestmark = pytest.mark.integration
HOUR = 1_798_000_000 - 1_798_000_000 % 3600  # an hour's start, epoch s
VOLUMES = (10_000, 100_000, 200_000, 300_000)
VERSION = "bench-model"  # scored_items' model version
KEYS = [("global", ["*"]), ("source", SOURCES), ("lang", sorted(TEMPLATES)), ("topic", TOPICS)]
BATCH, BATCHES = 500, 5
# How the windows are kept: "recomputed" from document_keys (before b78f741) or "incremented" by each batch's counts.
IMPLEMENTATION = "recomputed" if hasattr(AggregateRepository, "recompute") else "incremented"


def _fill(first: int, end: int) -> str:
    """Key rows of documents FIRST..END-1 over the hour (7919 is prime to 3600; 3 to 5, 7 and 20), as the persist
    stage writes them, then every window rebuilt from the key rows."""
    sql = []
    for key_type, values in KEYS:
        sql.append(f"""
            INSERT INTO document_keys (doc_id, model_version, key_type, key, event_ts, sentiment_label, sentiment_score)
            SELECT 'd' || n, '{VERSION}', '{key_type}', (ARRAY{list(values)!r})[1 + (n * 3) % {len(values)}],
                   {HOUR} + (n::bigint * 7919) % 3600, (ARRAY['negative', 'neutral', 'positive'])[1 + n % 3], (n % 100) / 100.0
            FROM generate_series({first}, {end - 1}) AS n;""")
    sql.append(f"DELETE FROM aggregates; {_WINDOWS.format(table='aggregates')}; ANALYZE;")
    return "".join(sql)


# Every window of every key, from the key rows: what the aggregates must equal.
_WINDOWS = """
    INSERT INTO {table} (window_s, window_start, key_type, key, model_version, count_negative, count_neutral,
                         count_positive, volume, score_sum, mean_score)
    SELECT w, to_timestamp(event_ts - event_ts % w), key_type, key, model_version,
           count(*) FILTER (WHERE sentiment_label = 'negative'), count(*) FILTER (WHERE sentiment_label = 'neutral'),
           count(*) FILTER (WHERE sentiment_label = 'positive'), count(*), sum(sentiment_score), avg(sentiment_score)
    FROM document_keys CROSS JOIN (VALUES (60), (300), (3600)) AS windows (w)
    GROUP BY w, event_ts - event_ts % w, key_type, key, model_version"""


def batch(seed: int) -> list[ScoredItem]:
    """BATCH new scored documents (bench_persist's key mix: ≈4.5 keys each) in the hour's last minute."""
    last_minute = datetime.fromtimestamp(HOUR + 3540, UTC)
    return [
        item.model_copy(update={"event_time": last_minute + timedelta(seconds=n * 59 / BATCH)})
        for n, item in enumerate(scored_items(BATCH, seed=seed))
    ]


async def _write(url: str, batches: list[list[ScoredItem]]) -> list[float]:
    database = make_engine(url)
    stage = PersistStage(database, StoreSettings(url=url))
    try:
        times = []
        for documents in batches:
            started = time.perf_counter()
            await stage.write(documents)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await database.dispose()


def test_persist_transaction_cost_as_the_hour_fills(database: Database) -> None:
    results = []
    stored = 0
    for step, volume in enumerate(VOLUMES):
        asyncio.run(_pg_execute(database.dsn, _fill(stored, volume)))
        stored = volume
        seed = volume  # new documents every time
        times = asyncio.run(_write(database.url, [batch(seed + n) for n in range(BATCHES)]))
        # The windows still equal a recomputation from the key rows, whichever way they were kept.
        asyncio.run(_pg_execute(database.dsn, "CREATE TABLE expected (LIKE aggregates INCLUDING DEFAULTS); "
                                + _WINDOWS.format(table="expected")))
        differing = database.count("""
            SELECT count(*) FROM aggregates a FULL JOIN expected e USING (window_s, window_start, key_type, key, model_version)
            WHERE a.volume IS DISTINCT FROM e.volume OR a.count_negative IS DISTINCT FROM e.count_negative
               OR a.count_positive IS DISTINCT FROM e.count_positive OR abs(a.score_sum - e.score_sum) > 1e-6""")
        asyncio.run(_pg_execute(database.dsn, "DROP TABLE expected"))
        assert differing == 0
        hour = database.count(f"SELECT volume FROM aggregates WHERE window_s = 3600 AND key_type = 'global'"
                              f" AND window_start = to_timestamp({HOUR})")
        assert hour == volume + BATCH * BATCHES * (step + 1)  # the batches of every step so far
        results.append({"documents_in_hour": volume, "batch": BATCH, "median_s": round(statistics.median(times), 4),
                        "times_s": [round(t, 4) for t in times]})
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    (report.RESULTS / f"persist-cost-{IMPLEMENTATION}.json").write_text(
        json.dumps({"implementation": IMPLEMENTATION, "runs": results}, indent=1) + "\n"
    )
