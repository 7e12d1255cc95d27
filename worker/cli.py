"""`finpulse` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from worker.settings import Settings

if TYPE_CHECKING:
    from engines import Engine

if TYPE_CHECKING:
    from worker.subscriptions import SubscriptionRepository

cli = typer.Typer(help="finpulse: streaming multilingual financial sentiment monitoring.", no_args_is_help=True)
db_cli = typer.Typer(help="SQL store schema.", no_args_is_help=True)
model_cli = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
subscriptions_cli = typer.Typer(help="Alert subscriptions in the SQL store (FINPULSE_DATABASE_URL).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(model_cli, name="model")
cli.add_typer(subscriptions_cli, name="subscriptions")
err = Console(stderr=True)
T = TypeVar("T")


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

    from worker.app import create_app
    from worker.logfilter import Throttle
    from worker.topics import ensure_topics

    _logging(loglevel)
    settings = Settings()
    ensure_topics(settings)
    engine = _load_engine(settings)
    err.print(f"model {engine.model_version} on {engine.backend}; namespace {settings.namespace}")
    app = create_app(settings, engine)
    logging.getLogger("aiokafka").addFilter(Throttle(every_s=10))  # reconnect errors while a broker is down
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
    backend: Annotated[Optional[str], typer.Option(help="auto, torch, onnxruntime, tensorrt")] = None,
) -> None:
    """Score a JSONL file to JSONL on standard output, without Kafka. Rejects go to standard error."""
    from worker.ingest import Rejection, decode_news_item

    settings = Settings()
    engine = _load_engine(settings, model, backend)
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


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Fine-tune a BERT checkpoint for sentiment and topic (`finpulse train --help` lists the options).

    The same options work under `accelerate launch -m engines.train` for several GPUs or machines.
    """
    from engines.train import main as train_main

    train_main(list(ctx.args))


@cli.command()
def export(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Checkpoint directory")],
    to: Annotated[list[str], typer.Option(help="onnx, onnx-int8, tensorrt (repeatable)")] = ["onnx", "onnx-int8"],
    fp16: Annotated[bool, typer.Option(help="TensorRT: build an fp16 engine")] = True,
    int8_attention: Annotated[
        bool, typer.Option(help="dynamic int8: quantise the attention projections too (faster; more drift)")
    ] = True,
    int8_mode: Annotated[
        str, typer.Option(help="dynamic (activation ranges per call) or static (calibrated once on --calibration)")
    ] = "dynamic",
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            exists=True, dir_okay=False,
            help="JSONL with a `text` field, training-side texts: static int8 calibrates on them; dynamic int8 "
            "picks 7- or 8-bit weights by the probability shift on them",
        ),
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="texts drawn (seeded) from --calibration")] = 200,
    calibration_method: Annotated[str, typer.Option(help="static int8: minmax, entropy or percentile")] = "minmax",
    int8_reduce_range: Annotated[
        Optional[bool],
        typer.Option(help="7-bit (--int8-reduce-range) or 8-bit weights; default: dynamic picks the closer to fp32, static 7-bit"),
    ] = None,
) -> None:
    """Compile a checkpoint: ONNX (checked against PyTorch), int8 ONNX for CPUs, a TensorRT engine for GPUs."""
    from engines.export import (
        build_tensorrt_engine,
        export_onnx,
        quantize_int8,
        quantize_int8_static,
    )

    unknown = set(to) - {"onnx", "onnx-int8", "tensorrt"}
    if unknown:
        raise typer.BadParameter(f"unknown target(s) {sorted(unknown)}; use onnx, onnx-int8, tensorrt", param_hint="--to")
    if int8_mode not in ("dynamic", "static"):
        raise typer.BadParameter("use dynamic or static", param_hint="--int8-mode")
    texts: list[str] = []
    if "onnx-int8" in to and int8_mode == "static" and calibration is None:
        raise typer.BadParameter("static int8 needs --calibration FILE (JSONL, `text`)", param_hint="--calibration")
    if "onnx-int8" in to and calibration is not None:
        import random

        lines = [json.loads(line) for line in calibration.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [row["text"] for row in lines if isinstance(row, dict) and isinstance(row.get("text"), str)]
        texts = random.Random(0).sample(texts, min(calibration_size, len(texts)))
    onnx_path = model / "model.onnx"
    if "onnx" in to or not onnx_path.exists():
        onnx_path = export_onnx(model)
        err.print(f"ONNX: {onnx_path} (matches PyTorch within tolerance)")
    if "onnx-int8" in to:
        if int8_mode == "static":
            out = quantize_int8_static(
                onnx_path, texts, method=calibration_method,
                reduce_range=True if int8_reduce_range is None else int8_reduce_range,
            )
            err.print(f"static int8 ONNX ({len(texts)} calibration texts): {out}")
        else:
            out = quantize_int8(
                onnx_path, attention=int8_attention, reduce_range=int8_reduce_range, check_texts=texts or None
            )
            err.print(f"int8 ONNX: {out}")
    if "tensorrt" in to:
        err.print(f"TensorRT engine: {build_tensorrt_engine(onnx_path, fp16=fp16)}")


@cli.command()
def bench(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Checkpoint directory (exported first)")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSONL with a `text` field")],
    n: Annotated[int, typer.Option(help="Texts to score per repeat")] = 1000,
    backends: Annotated[str, typer.Option(help="Comma-separated; the first is the baseline")] = "torch,onnxruntime,onnxruntime-int8",
    threads: Annotated[int, typer.Option(help="CPU threads per backend")] = 2,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median reported)")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here")] = None,
) -> None:
    """Documents per second of each backend on the same texts, in one process, against the first."""
    from rich.table import Table

    from engines.bench import bench_backends
    from worker.ingest import Rejection, decode_news_item

    decoded = (decode_news_item(line, max_text_chars=100_000) for line in data.read_bytes().splitlines())
    texts = [item.text for item in decoded if not isinstance(item, Rejection)][:n]
    if not texts:
        raise typer.BadParameter(f"no valid items with a `text` in {data}", param_hint="--data")
    results = bench_backends(model, texts, [b.strip() for b in backends.split(",")], threads=threads, repeats=repeats)
    table = Table(title=f"{len(texts)} texts from {data.name}, {threads} threads, median of {repeats}")
    for column in ("backend", "docs/s", "× baseline", "sentiment labels same", "topic labels same", "max prob diff"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['docs_per_s']:.1f}",
            f"{r['speedup']:.2f}",
            f"{r['sentiment_label_agreement']:.1%}",
            f"{r['topic_label_agreement']:.1%}",
            f"{max(r['sentiment_max_prob_diff'], r['topic_max_prob_diff']):.4f}",
        )
    Console().print(table)
    if out:
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")


@model_cli.command("tiny")
def model_tiny(out: Annotated[Path, typer.Argument(help="Directory to write")] = Path("models/tiny")) -> None:
    """Build a tiny random-weight multilingual BERT checkpoint (for demos and tests; its scores mean nothing)."""
    from engines.tiny import build_tiny_checkpoint

    build_tiny_checkpoint(out)
    err.print(f"tiny checkpoint written to {out}")


@cli.command()
def replay(
    start: Annotated[str, typer.Option("--from", help="Start of the range (inclusive), ISO 8601; UTC if no zone")],
    end: Annotated[str, typer.Option("--to", help="End of the range (exclusive), ISO 8601; UTC if no zone")],
    topic: Annotated[Optional[str], typer.Option(help="Default: <namespace>.docs")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint to score with (default FINPULSE_MODEL_DIR)")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, torch, onnxruntime, tensorrt")] = None,
    webhooks: Annotated[bool, typer.Option(help="Deliver webhooks of alerts the replay fires")] = True,
    restart: Annotated[bool, typer.Option(help="Start the range over instead of resuming")] = False,
    max_messages: Annotated[Optional[int], typer.Option(help="Stop after this many (resume later)")] = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "warning",
) -> None:
    """Re-process [--from, --to) of a topic into the store: backfill, or re-score history with another model."""
    from aiokafka.errors import KafkaError

    from worker.replay import ReplayError
    from worker.replay import replay as run_replay

    _logging(loglevel)
    settings = Settings()
    range_start, range_end = _moment(start, "--from"), _moment(end, "--to")
    engine = _load_engine(settings, model, backend)
    err.print(f"replaying with model {engine.model_version} on {engine.backend}")
    try:
        report = asyncio.run(
            run_replay(
                settings,
                engine,
                start=range_start,
                end=range_end,
                topic=topic,
                deliver_webhooks=webhooks,
                restart=restart,
                max_messages=max_messages,
            )
        )
    except ReplayError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except KafkaError as exc:
        err.print(f"[red]Kafka at {settings.kafka_url} failed: {exc!r}; run the same command again to resume[/red]")
        raise typer.Exit(1) from exc
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(report.rejected.items())) or "none"
    state = "complete" if report.complete else "stopped early: run the same command again to resume"
    err.print(
        f"{state}. {report.in_range} messages in range on {report.partitions} partitions, {report.resumed_from} done"
        f" before; read {report.read}, stored {report.stored}, not valid {rejected}. Consumer group {report.group}"
    )


def _moment(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-11-28T08:00:00Z", param_hint=option) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _load_engine(settings: Settings, model: str | None = None, backend: str | None = None) -> Engine:
    from engines import load_engine

    try:
        return load_engine(
            model or settings.model_dir,
            backend or settings.backend,
            max_length=settings.max_length,
            token_budget=settings.token_budget,
            threads=settings.engine_threads,
        )
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot load the model {model or settings.model_dir!r}: {str(exc).splitlines()[0]}[/red]")
        err.print("point FINPULSE_MODEL_DIR (or --model) at a checkpoint directory, e.g. `finpulse model tiny models/current`")
        raise typer.Exit(2) from exc


@cli.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults: local Kafka, SQLite, no Redis, a tiny model."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo())


@cli.command()
def api(
    host: Annotated[Optional[str], typer.Option(help="Interface (default FINPULSE_API_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default FINPULSE_API_PORT)")] = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the HTTP API: subscriptions, aggregates, alerts (OpenAPI at /docs)."""
    import uvicorn

    from worker.api import create_api

    settings = Settings()
    if not settings.api_token:
        err.print("[yellow]FINPULSE_API_TOKEN is unset: reads only, writes answer 503[/yellow]")
    uvicorn.run(create_api(settings), host=host or settings.api_host, port=port or settings.api_port, log_level=loglevel)


def _with_subscriptions(settings: Settings, action: Callable[[SubscriptionRepository], Awaitable[T]]) -> T:
    """Run one repository call on a short-lived engine."""
    from worker.subscriptions import open_repository

    async def run() -> T:
        async with open_repository(settings.database_url) as repository:
            return await action(repository)

    return asyncio.run(run())


def _invalid(message: str) -> typer.Exit:
    from rich.markup import escape

    err.print(f"[red]invalid subscription:[/red] {escape(message)}", highlight=False)
    return typer.Exit(2)


@subscriptions_cli.command("add")
def subscriptions_add(
    name: Annotated[str, typer.Option(help="A name for people")],
    key_type: Annotated[str, typer.Option(help="global, entity, topic, lang or source")],
    rule: Annotated[str, typer.Option(help='JSON: {"type": "threshold" | "spike" | "instant", ...} (schemas/alerts.py)')],
    key: Annotated[str, typer.Option(help="e.g. TSLA; * for every key of the type")] = "*",
    window: Annotated[int, typer.Option(help="Window size, seconds: one of FINPULSE_WINDOWS")] = 60,
    cooldown: Annotated[int, typer.Option(help="Seconds before the same key may alert again")] = 0,
    webhook: Annotated[Optional[str], typer.Option(help="POST each alert to this URL (HMAC signed)")] = None,
    secret: Annotated[Optional[str], typer.Option(help="Webhook HMAC key (default: generated, printed once)")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Store it switched off")] = False,
) -> None:
    """Create a subscription; prints it as JSON, with the webhook secret (the only time it is shown)."""
    from pydantic import ValidationError

    from schemas.alerts import SubscriptionSpec
    from worker.subscriptions import SubscriptionError, validate_spec

    settings = Settings()
    try:
        rule_value = json.loads(rule)
    except ValueError as exc:
        raise _invalid(f"--rule is not JSON: {exc}") from None
    payload = {"name": name, "key_type": key_type, "key": key, "rule": rule_value, "window_s": window,
               "cooldown_s": cooldown, "webhook_url": webhook, "webhook_secret": secret, "enabled": not disabled}
    try:
        spec = SubscriptionSpec.model_validate(payload)
        validate_spec(spec, windows=settings.window_sizes, allow_private_webhooks=settings.webhook_allow_private)
    except ValidationError as exc:
        raise _invalid("; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())) from None
    except SubscriptionError as exc:
        raise _invalid(str(exc)) from None
    created = _with_subscriptions(settings, lambda repository: repository.create(spec))
    sys.stdout.write(created.model_dump_json(indent=2) + "\n")
    err.print(f"[green]subscription {created.id} created[/green]")


@subscriptions_cli.command("list")
def subscriptions_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output instead of a table")] = False,
) -> None:
    """Every subscription, oldest first (webhook secrets are not shown)."""
    from rich.table import Table

    found = _with_subscriptions(Settings(), lambda repository: repository.list())
    if as_json:
        sys.stdout.write(json.dumps([s.model_dump(mode="json") for s in found], indent=2) + "\n")
        return
    table = Table(title=f"{len(found)} subscription(s)")
    table.add_column("id", no_wrap=True)  # whole, to copy into `rm`
    for column in ("name", "key", "window", "rule", "cooldown", "webhook", "enabled"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(s.id, s.name, f"{s.key_type}:{s.key}", f"{s.window_s}s", _rule_text(s.rule), f"{s.cooldown_s}s",
                      str(s.webhook_url or ""), "yes" if s.enabled else "no")
    Console().print(table)


def _rule_text(rule: Any) -> str:
    if rule.type == "threshold":
        return f"{rule.metric} {rule.op} {rule.value:g} (min {rule.min_count})"
    if rule.type == "spike":
        return f"{rule.metric} {rule.method} >= {rule.threshold:g} over {rule.baseline_windows} (min {rule.min_count})"
    return f"P(negative) >= {rule.min_confidence:g}"


@subscriptions_cli.command("rm")
def subscriptions_rm(subscription_id: Annotated[str, typer.Argument(help="The subscription's id")]) -> None:
    """Delete a subscription (its fired alerts stay)."""
    if not _with_subscriptions(Settings(), lambda repository: repository.delete(subscription_id)):
        err.print(f"no subscription {subscription_id!r}", style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    err.print(f"subscription {subscription_id} deleted")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,  # a log file gets the summary line, not a frozen bar
    )


def main() -> None:
    cli()
