"""`python -m worker.entrypoints.bench_persist`: what the persist stage costs per batch, on SQL alone (issue 12).

No Kafka and no model: realistic scored documents (worker/samples.py texts, watchlist entities,
20 topics, event times advancing as a stream at 300 docs/s with a few late ones) go through
`PersistStage.write` in batches, with three subscriptions judged on every batch, into a
throw-away database: a new PostgreSQL database made beside FINPULSE_DATABASE_URL's (dropped at the
end) and an SQLite file. Each batch is timed in wall-clock and in the main thread's CPU
(`time.thread_time`; aiosqlite runs SQLite in its own thread, counted apart), first with new
documents, then redelivered (every row an update). The first batches warm the caches and are not counted.

    export $(python -m ops.services env) && python -m worker.entrypoints.bench_persist --batches 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from schemas.alerts import InstantRule, SpikeRule, Subscription, ThresholdRule
from schemas.news import Prediction, ScoredItem
from worker.samples import sample_items
from worker.settings import StoreSettings
from worker.stages.entities import Watchlist, find_entities
from worker.stages.persist import PersistStage
from worker.store.database import make_engine, upgrade

TOPICS = [
    "earnings", "guidance", "m&a", "dividend", "ipo", "analyst", "macro", "rates", "fx", "commodities",
    "regulation", "legal", "product", "management", "labour", "supply_chain", "energy", "crypto", "esg", "other",
]
DOCS_PER_S = 300  # how fast event time advances: the pipeline's rate this issue is about
WARM_UP_BATCHES = 2


def scored_items(count: int, seed: int = 0) -> list[ScoredItem]:
    """`count` scored documents with the key mix a real stream has (≈4.5 keys each)."""
    rng = random.Random(seed)
    watchlist = Watchlist.load()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    items = []
    for n, raw in enumerate(sample_items(count, seed=seed, prefix=f"bench-{seed}")):
        weights = [rng.random() for _ in range(3)]
        total = sum(weights)
        probs = dict(zip(("negative", "neutral", "positive"), (w / total for w in weights), strict=True))
        late = timedelta(seconds=rng.randint(60, 900)) if rng.random() < 0.05 else timedelta(0)
        topic = rng.choice(TOPICS)
        items.append(
            ScoredItem(
                id=raw["id"],
                source=raw["source"],
                text=raw["text"],
                text_hash=f"{rng.getrandbits(256):064x}",
                lang=raw["lang"],
                entities=find_entities(raw["text"], watchlist),
                sentiment=Prediction(label=max(probs, key=probs.__getitem__), probs=probs),
                topic=Prediction(label=topic, probs={topic: 0.6, "other": 0.4}),
                sentiment_score=probs["positive"] - probs["negative"],
                event_time=start + timedelta(seconds=n / DOCS_PER_S) - late,
                model_version="bench-model",
                scored_at=datetime.now(UTC),
                latency_ms=5.0,
                cached=False,
            )
        )
    return items


def subscriptions() -> list[Subscription]:
    now = datetime.now(UTC)
    rules = [
        ("global", "*", ThresholdRule(type="threshold", metric="negative_ratio", value=0.9, min_count=20)),
        ("entity", "*", SpikeRule(type="spike", threshold=3.0, baseline_windows=12, min_count=5)),
        ("entity", "*", InstantRule(type="instant", min_confidence=0.9)),
    ]
    return [  # a cooldown, so the alerts already stored are looked up too
        Subscription(id=str(uuid.uuid4()), name=f"bench-{rule.type}", key_type=key_type, key=key, rule=rule,
                     window_s=60, cooldown_s=300, created_at=now, updated_at=now)
        for key_type, key, rule in rules
    ]


async def measure(url: str, items: list[ScoredItem], batch: int) -> dict[str, object]:
    database = make_engine(url)
    stage = PersistStage(database, StoreSettings(url=url))
    watching = subscriptions()
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    figures: dict[str, object] = {}
    try:
        for phase in ("new", "redelivered"):
            wall, main_cpu, all_cpu = [], [], []
            for n, documents in enumerate(batches):
                t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
                await stage.write(documents, watching)
                t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
                if phase == "redelivered" or n >= WARM_UP_BATCHES:
                    wall.append(t1 - t0)
                    main_cpu.append(c1 - c0)
                    all_cpu.append(p1 - p0)
            figures[phase] = {
                "batches": len(wall),
                "docs_per_s": round(batch * len(wall) / sum(wall), 1),
                "ms_per_batch_median": round(1000 * statistics.median(wall), 1),
                "ms_per_batch_p90": round(1000 * sorted(wall)[int(0.9 * (len(wall) - 1))], 1),
                "main_thread_cpu_ms_per_batch": round(1000 * statistics.mean(main_cpu), 1),
                "process_cpu_ms_per_batch": round(1000 * statistics.mean(all_cpu), 1),
            }
    finally:
        await database.dispose()
    return figures


async def on_postgres(base_url: str, items: list[ScoredItem], batch: int) -> dict[str, object]:
    """In a database of its own, made and dropped here, beside the one base_url names."""
    admin_dsn = make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"fp_bench_{uuid.uuid4().hex[:12]}"
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            await asyncio.to_thread(upgrade, url)
            return await measure(url, items, batch)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def on_sqlite(items: list[ScoredItem], batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        return await measure(url, items, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("FINPULSE_DATABASE_URL"),
                        help="a PostgreSQL URL whose server gets the throw-away database (FINPULSE_DATABASE_URL)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    items = scored_items(args.batch * (args.batches + WARM_UP_BATCHES), seed=args.seed)
    figures: dict[str, object] = {
        "batch": args.batch,
        "keys_per_doc": round(sum(4 + len(i.entities) for i in items) / len(items), 2),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
    }
    if args.url and args.url.startswith("postgresql"):
        figures["postgresql"] = asyncio.run(on_postgres(args.url, items, args.batch))
    if not args.no_sqlite:
        figures["sqlite"] = asyncio.run(on_sqlite(items, args.batch))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
