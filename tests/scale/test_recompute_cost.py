"""What one persist transaction pays under its advisory locks as the current hour fills up.

Every persist batch touches the `global` key (every document counts there) and, in a mixed stream,
nearly every source, language and topic key too, so every batch's transaction locks those keys and
recomputes their windows from `document_keys` (worker/store/aggregates.py): for the 1-hour window,
from every document stored in that hour so far. This stores documents' key rows as the persist stage
does (global, 5 sources, 7 languages, 20 topics: 4 rows a document; entities left out) for an hour
holding 10k, 100k, 200k and 300k documents, runs the persist stage's own lock and recompute
(`AggregateRepository.lock`, `.recompute`) for a batch touching every key in the newest minute, and
records the time from the lock to the commit (median of 5) in docs/scaling/recompute.json. It
asserts only that the windows it computes hold every document. docs/scaling.md turns the times into
the ceiling they set.
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
VOLUMES = (10_000, 100_000, 200_000, 300_000)
VERSION = "scale-v1"
KEYS = [("global", ["*"]), ("source", [f"s{i}" for i in range(5)]), ("lang", ["ar", "de", "en", "es", "fr", "ja", "zh"]),
        ("topic", [f"t{i}" for i in range(20)])]


async def _recompute(url: str) -> tuple[float, dict[tuple[int, str, str], int]]:
    """One persist-like transaction: lock every key, recompute its 60 s, 300 s and 3600 s windows of the last minute."""
    keys = [(key_type, key, VERSION) for key_type, values in KEYS for key in values]
    last = HOUR + 3599
    touched = {w: {key: {last - last % w} for key in keys} for w in (60, 300, 3600)}
    engine = make_engine(url)
    try:
        async with unit_of_work(engine) as uow:  # connected, transaction begun: time from here to the commit
            started = time.perf_counter()
            await uow.aggregates.lock(keys)
            rows = await uow.aggregates.recompute(touched)
        return time.perf_counter() - started, {(r["window_s"], r["key_type"], r["key"]): r["volume"] for r in rows}
    finally:
        await engine.dispose()


def _insert(first: int, end: int) -> str:
    """Key rows of documents FIRST..END-1, spread over the hour (7919 is prime to 3600), as the persist stage writes them."""
    rows = []
    for key_type, values in KEYS:
        pick = f"(ARRAY{values!r})[1 + (n * 3) % {len(values)}]"  # 3 is prime to 5, 7 and 20: every key gets documents
        rows.append(f"""
            INSERT INTO document_keys (doc_id, model_version, key_type, key, event_ts, sentiment_label, sentiment_score)
            SELECT 'd' || n, '{VERSION}', '{key_type}', {pick}, {HOUR} + (n::bigint * 7919) % 3600,
                   (ARRAY['negative', 'neutral', 'positive'])[1 + n % 3], (n % 100) / 100.0
            FROM generate_series({first}, {end - 1}) AS n;""")
    return "".join(rows) + "\nANALYZE document_keys;"


def test_recompute_cost_grows_with_the_hour(database: Database) -> None:
    results = []
    stored = 0
    for volume in VOLUMES:
        asyncio.run(_pg_execute(database.dsn, _insert(stored, volume)))
        stored = volume
        times = []
        for _ in range(5):
            seconds, volumes = asyncio.run(_recompute(database.url))
            times.append(seconds)
        for key_type, values in KEYS:  # the hour's windows of each key type hold every document once
            assert sum(volumes.get((3600, key_type, key), 0) for key in values) == volume
        assert 0 < volumes[(60, "global", "*")] < volume
        results.append({"documents_in_hour": volume, "key_rows_in_hour": volume * len(KEYS), "keys_locked": len(volumes) // 3,
                        "median_s": round(statistics.median(times), 4), "times_s": [round(t, 4) for t in times]})
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    (report.RESULTS / "recompute.json").write_text(json.dumps(results, indent=1) + "\n")
