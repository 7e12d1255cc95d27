"""Commands that run the pipeline: services, db, worker, produce, score, replay, api, demo."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker import logs
from worker.entrypoints.cli.app import (
    check_language_detector,
    cli,
    db_cli,
    err,
    load_engine_or_exit,
    moment,
    progress,
    setup_logging,
)
from worker.settings import Settings


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def services(ctx: typer.Context) -> None:
    """Local Kafka (KRaft), Redis and PostgreSQL without Docker: up | down | status | start/stop/restart NAME."""
    from ops import services as local_services

    raise typer.Exit(local_services.main(list(ctx.args)))


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the SQL schema (FINPULSE_DATABASE_URL)."""
    from worker.store.database import upgrade

    url = Settings.from_env().store.url
    upgrade(url, revision)
    err.print(f"[green]schema at {revision}[/green] on {url.split('@')[-1]}")


@cli.command()
def worker(loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "info") -> None:
    """Run the Faust worker: ingest, score, persist."""
    import faust

    from worker.entrypoints.live_model import registered_live_dir
    from worker.entrypoints.stream import create_app
    from worker.logfilter import Throttle
    from worker.topics import ensure_topics

    settings = Settings.from_env()
    setup_logging(loglevel, settings)
    ensure_topics(settings)
    model_dir = registered_live_dir(settings) or settings.engine.model_dir  # a promoted model wins over the setting
    engine = load_engine_or_exit(settings.engine, model_dir)
    check_language_detector(settings.pipeline)
    err.print(f"model {engine.model_version} on {engine.backend}; namespace {settings.namespace}")
    app = create_app(settings, engine, model_dir)
    logging.getLogger("aiokafka").addFilter(Throttle(every_s=10))  # reconnect errors while a broker is down
    # Faust's own coloured text lines, unless JSON is asked for: then the same config as every other line.
    json_logs = logs.logging_config(loglevel, "json", settings.namespace) if settings.log_format == "json" else None
    # What is loaded by now (the model's runtime, Faust, SQLAlchemy) lives as long as the process: frozen out of the
    # collector's sight, full collections stop walking it between batches (bench --pipeline, starter int8, half
    # rate: stored p50 184-267 -> 109-120 ms, p99 386-599 -> 200-349 ms; docs/performance.md).
    gc.collect()
    gc.freeze()
    faust.Worker(app, loglevel=loglevel, logging_config=json_logs).execute_from_commandline()


@cli.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one NewsItem per line")],
    rate: Annotated[float, typer.Option(help="Messages per second; 0 = as fast as possible")] = 0.0,
    topic: Annotated[Optional[str], typer.Option(help="Default: <namespace>.docs")] = None,
) -> None:
    """Send each line of FILE, byte for byte, to the docs topic (malformed lines too: they test the DLQ)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from worker.kafka_security import client_options
    from worker.topics import bootstrap_servers

    setup_logging("error")  # kafka-python says why it cannot connect (e.g. a refused SASL login) only in its log
    settings = Settings.from_env()
    target = topic or settings.topic("docs")
    lines = [line.rstrip(b"\r\n") for line in file.read_bytes().splitlines() if line.strip()]
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers(settings.kafka.url), acks="all", linger_ms=5, **client_options(settings.kafka)
        )
    except KafkaError as exc:  # e.g. a refused SASL login: kafka-python logs why (mostly), then times out
        err.print(f"Kafka at {settings.kafka.url} ({settings.kafka.security_protocol}) failed: {exc!r}; check it and"
                  " FINPULSE_KAFKA_SASL_* / _SSL_* (the log above says why when the broker told)", style="red",
                  markup=False, highlight=False)
        raise typer.Exit(1) from exc
    interval = 1.0 / rate if rate > 0 else 0.0
    with progress() as bar:
        task = bar.add_task(f"→ {target}", total=len(lines))
        for line in lines:
            producer.send(target, key=_key_of(line), value=line)
            bar.advance(task)
            if interval:
                time.sleep(interval)
        producer.flush()
    producer.close()
    err.print(f"sent {len(lines)} messages to {target}")


def _key_of(line: bytes) -> bytes | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    key = value.get("id") if isinstance(value, dict) else None
    return key.encode() if isinstance(key, str) else None


@cli.command()
def score(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL NewsItems")],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint dir (default FINPULSE_MODEL_DIR)")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, torch, onnxruntime, tensorrt")] = None,
    cache: Annotated[bool, typer.Option(help="Use the Redis score cache (FINPULSE_REDIS_URL) like the worker")] = True,
    batch: Annotated[int, typer.Option(help="Items per scoring batch", min=1)] = 256,
) -> None:
    """Score a JSONL file through the worker's decode and score stages, without Kafka.

    Standard output gets one ScoredItem per valid line, as the worker emits them on
    <ns>.scored (language, entities, both heads, cache flag); standard error gets one
    DeadLetter per rejected line, as the worker sends them to <ns>.dlq (its offset is the line number).
    """
    from worker.stages.decode import decode
    from worker.stages.records import Record
    from worker.stages.score import build_score_stage

    settings = Settings.from_env()
    engine = load_engine_or_exit(settings.engine, model, backend)
    cache_settings = settings.cache if cache else settings.cache.model_copy(update={"url": None})
    lines = file.read_bytes().splitlines()
    records = [Record(value=line, topic=str(file), offset=n) for n, line in enumerate(lines, 1) if line.strip()]
    check_language_detector(settings.pipeline)
    stage = build_score_stage(engine, settings.pipeline, cache_settings, cache_prefix=settings.redis_prefix)
    scored = rejected = 0

    async def run() -> None:
        nonlocal scored, rejected
        try:
            with progress() as bar:
                task = bar.add_task("scoring", total=len(records))
                for start in range(0, len(records), batch):
                    decoded = decode(records[start : start + batch], max_text_chars=settings.pipeline.max_text_chars)
                    result = await stage(decoded.accepted)
                    for item in result.values:
                        sys.stdout.write(item.model_dump_json() + "\n")
                    for reject in decoded.rejected + result.rejected:
                        sys.stderr.write(reject.dead_letter().model_dump_json() + "\n")
                    scored += len(result.accepted)
                    rejected += len(decoded.rejected) + len(result.rejected)
                    bar.advance(task, min(batch, len(records) - start))
        finally:
            await stage.close()

    asyncio.run(run())
    err.print(f"scored {scored}, rejected {rejected} (model {engine.model_version} on {engine.backend})")


@cli.command()
def replay(
    start: Annotated[str, typer.Option("--from", help="Start of the range (inclusive), ISO 8601; UTC if no zone")],
    end: Annotated[str, typer.Option("--to", help="End of the range (exclusive), ISO 8601; UTC if no zone")],
    topic: Annotated[Optional[str], typer.Option(help="Default: <namespace>.docs")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint to score with (default FINPULSE_MODEL_DIR)")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, torch, onnxruntime, tensorrt")] = None,
    webhooks: Annotated[bool, typer.Option(help="Deliver webhooks of alerts the replay fires")] = True,
    shadow: Annotated[
        bool, typer.Option(help="Beside the live model, not as it: no alerts, no alerts or aggregates topic sends,"
                           " no webhooks; the version is registered as shadow (finpulse compare-models, promote)")
    ] = False,
    restart: Annotated[bool, typer.Option(help="Start the range over instead of resuming")] = False,
    max_messages: Annotated[Optional[int], typer.Option(help="Stop after this many (resume later)")] = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "warning",
) -> None:
    """Re-process [--from, --to) of a topic into the store: backfill, or re-score history with another model."""
    from aiokafka.errors import KafkaError

    from worker.entrypoints.replay import ReplayError
    from worker.entrypoints.replay import replay as run_replay

    setup_logging(loglevel)
    settings = Settings.from_env()
    range_start, range_end = moment(start, "--from"), moment(end, "--to")
    engine = load_engine_or_exit(settings.engine, model, backend)
    check_language_detector(settings.pipeline)
    err.print(f"replaying with model {engine.model_version} on {engine.backend}{' as a shadow' if shadow else ''}")
    try:
        report = asyncio.run(
            run_replay(
                settings, engine, start=range_start, end=range_end, topic=topic,
                deliver_webhooks=webhooks, restart=restart, max_messages=max_messages,
                shadow_model_dir=(model or settings.engine.model_dir) if shadow else None,
            )
        )
    except ReplayError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except KafkaError as exc:
        err.print(f"[red]Kafka at {settings.kafka.url} failed: {exc!r}; run the same command again to resume[/red]")
        raise typer.Exit(1) from exc
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(report.rejected.items())) or "none"
    state = "complete" if report.complete else "stopped early: run the same command again to resume"
    err.print(
        f"{state}. {report.in_range} messages in range on {report.partitions} partitions, {report.resumed_from} done"
        f" before; read {report.read}, stored {report.stored}, not valid {rejected}. Consumer group {report.group}"
    )


@cli.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults: local Kafka, SQLite, no Redis, a tiny model."""
    from worker.entrypoints.demo import run_demo

    raise typer.Exit(run_demo())


@cli.command()
def api(
    host: Annotated[Optional[str], typer.Option(help="Interface (default FINPULSE_API_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default FINPULSE_API_PORT)")] = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the HTTP API: subscriptions, aggregates, alerts (OpenAPI at /docs)."""
    import uvicorn

    from worker.entrypoints.api import create_api

    settings = Settings.from_env()
    try:
        app = create_api(settings)
    except ValueError as exc:
        err.print(f"cannot start the API: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if not settings.api.token:
        err.print("[yellow]FINPULSE_API_TOKEN is unset: only tokens from `finpulse tokens create` are accepted[/yellow]")
    log_config = logs.logging_config(loglevel, settings.log_format, settings.namespace)
    uvicorn.run(app, host=host or settings.api.host, port=port or settings.api.port, log_level=loglevel, log_config=log_config)
