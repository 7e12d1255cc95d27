"""`finpulse` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker.settings import Settings

cli = typer.Typer(help="finpulse: streaming multilingual financial sentiment monitoring.", no_args_is_help=True)
db_cli = typer.Typer(help="SQL store schema.", no_args_is_help=True)
model_cli = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(model_cli, name="model")
err = Console(stderr=True)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def services(ctx: typer.Context) -> None:
    """Local Kafka (KRaft), Redis and PostgreSQL without Docker: up | down | status | start/stop/restart NAME."""
    from ops import services as local_services

    raise typer.Exit(local_services.main(list(ctx.args)))


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the SQL schema (FINPULSE_DATABASE_URL)."""
    from worker.database import upgrade

    settings = Settings()
    upgrade(settings.database_url, revision)
    err.print(f"[green]schema at {revision}[/green] on {settings.database_url.split('@')[-1]}")


@cli.command()
def worker(loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "info") -> None:
    """Run the Faust worker: ingest, score, persist."""
    import faust

    from engines import load_engine
    from worker.app import create_app
    from worker.topics import ensure_topics

    _logging(loglevel)
    settings = Settings()
    ensure_topics(settings)
    engine = load_engine(
        settings.model_dir, settings.backend, max_length=settings.max_length, threads=settings.engine_threads
    )
    err.print(f"model {engine.model_version} on {engine.backend}; namespace {settings.namespace}")
    app = create_app(settings, engine)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()


@cli.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one NewsItem per line")],
    rate: Annotated[float, typer.Option(help="Messages per second; 0 = as fast as possible")] = 0.0,
    topic: Annotated[Optional[str], typer.Option(help="Default: <namespace>.docs")] = None,
) -> None:
    """Send each line of FILE, byte for byte, to the docs topic (malformed lines too: they test the DLQ)."""
    from kafka import KafkaProducer

    from worker.topics import bootstrap_servers

    settings = Settings()
    target = topic or settings.topic("docs")
    lines = [line.rstrip(b"\r\n") for line in file.read_bytes().splitlines() if line.strip()]
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), acks="all", linger_ms=5)
    interval = 1.0 / rate if rate > 0 else 0.0
    with _progress() as progress:
        task = progress.add_task(f"→ {target}", total=len(lines))
        for line in lines:
            producer.send(target, key=_key_of(line), value=line)
            progress.advance(task)
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
    backend: Annotated[Optional[str], typer.Option(help="auto, torch")] = None,
) -> None:
    """Score a JSONL file to JSONL on standard output, without Kafka. Rejects go to standard error."""
    from engines import load_engine
    from worker.ingest import Rejection, decode_news_item

    settings = Settings()
    engine = load_engine(model or settings.model_dir, backend or settings.backend, max_length=settings.max_length)
    items, rejected = [], 0
    for n, line in enumerate(file.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        decoded = decode_news_item(line, max_text_chars=settings.max_text_chars)
        if isinstance(decoded, Rejection):
            rejected += 1
            err.print(f"line {n}: {decoded.reason}: {decoded.detail}")
        else:
            items.append(decoded)
    batch = 256
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(items))
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            for item, scores in zip(chunk, engine.predict([i.text for i in chunk])):
                out = {
                    "id": item.id,
                    "sentiment": {"label": scores.sentiment.label, "probs": scores.sentiment.probs},
                    "topic": {"label": scores.topic.label, "probs": scores.topic.probs},
                    "sentiment_score": scores.sentiment_score,
                    "model_version": engine.model_version,
                }
                sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
            progress.advance(task, len(chunk))
    err.print(f"scored {len(items)}, rejected {rejected}")


@model_cli.command("tiny")
def model_tiny(out: Annotated[Path, typer.Argument(help="Directory to write")] = Path("models/tiny")) -> None:
    """Build a tiny random-weight multilingual BERT checkpoint (for demos and tests; its scores mean nothing)."""
    from engines.tiny import build_tiny_checkpoint

    build_tiny_checkpoint(out)
    err.print(f"tiny checkpoint written to {out}")


@cli.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults: local Kafka, SQLite, no Redis, a tiny model."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def main() -> None:
    cli()
