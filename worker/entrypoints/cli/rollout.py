"""Commands for model roll-outs: compare-models, promote, model versions (replay --shadow is in pipeline.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from worker.entrypoints.cli.app import cli, err, load_engine_or_exit, model_cli, moment
from worker.settings import Settings

T = TypeVar("T")
out = Console()


def _with_store(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(database)` on a short-lived SQL engine; an unreachable store is one clear line and exit 1."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from worker.store.database import make_engine

    async def run() -> T:
        database = make_engine(settings.store.url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except (OSError, OperationalError, DBAPIError) as exc:
        err.print(f"SQL store at {settings.store.url.split('@')[-1]} failed: {str(exc).splitlines()[0][:300]}"
                  " (run `finpulse db upgrade` if a table is missing)", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from exc


@cli.command("compare-models")
def compare_models(
    old: Annotated[str, typer.Argument(help="Model version of reference, usually the live one")],
    new: Annotated[str, typer.Argument(help="Candidate model version, e.g. written by replay --shadow")],
    start: Annotated[str, typer.Option("--from", help="Documents with an event time from this (inclusive), ISO 8601")],
    end: Annotated[str, typer.Option("--to", help="… to this (exclusive), ISO 8601; UTC if no zone")],
    page: Annotated[Optional[Path], typer.Option("--out", dir_okay=False, help="Write a self-contained HTML page")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", dir_okay=False, help="Write the whole comparison as JSON")] = None,
    examples: Annotated[int, typer.Option(help="Flipped documents shown per key", min=0, max=50)] = 3,
    rows: Annotated[int, typer.Option(help="Rows per table printed", min=1, max=1000)] = 15,
) -> None:
    """Label flips, aggregate changes and alerts that would fire differently between two model versions."""
    from worker.entrypoints.compare_models import NothingToCompare
    from worker.entrypoints.compare_models import compare_models as run_compare

    range_start, range_end = moment(start, "--from"), moment(end, "--to")
    if range_end <= range_start:
        raise typer.BadParameter("must be after --from", param_hint="--to")
    if old == new:
        raise typer.BadParameter("OLD and NEW are the same version", param_hint="NEW")
    settings = Settings.from_env()
    try:
        result = _with_store(settings, lambda db: run_compare(db, old, new, range_start, range_end, examples=examples))
    except NothingToCompare as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from exc
    print_summary(result, rows)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        err.print(f"comparison as JSON: {json_file}")
    if page is not None:
        from worker.report.compare import render_comparison

        page.write_text(render_comparison(result), encoding="utf-8")
        err.print(f"page: {page.resolve()}")


def _signed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def print_summary(result: dict[str, Any], rows: int) -> None:
    docs, alerts = result["documents"], result["alerts"]
    out.print(f"[bold]{result['old']}[/bold] -> [bold]{result['new']}[/bold], event time [{result['from']}, {result['to']}): "
              f"{docs['old']} / {docs['new']} documents, {docs['paired']} scored by both, {docs['flipped']} changed "
              f"sentiment, {docs['topic_flipped']} changed topic")
    flips = Table(title="Label flips (documents scored by both; topic as OLD saw it)")
    for column in ("key", "docs", "flipped", "rate", "topic changed", "mean score old -> new", "most common flip"):
        flips.add_column(column, justify="left" if column in ("key", "most common flip") else "right")
    for row in result["flips"][:rows]:
        moves = [(n, o, w) for o, by_new in row["confusion"].items() for w, n in by_new.items() if o != w and n]
        common = max(moves, default=None)
        flips.add_row(
            f"{row['key_type']}:{row['key']}", str(row["documents"]), str(row["flipped"]), f"{row['flip_rate']:.0%}",
            str(row["topic_flipped"]), f"{row['mean_score_old']:+.3f} -> {row['mean_score_new']:+.3f}",
            f"{common[1]} -> {common[2]} ({common[0]})" if common else "",
        )
    out.print(flips)
    changed = [a for a in result["aggregates"] if a["volume_old"] != a["volume_new"] or a["mean_score_old"] != a["mean_score_new"]]
    changed.sort(key=lambda a: -abs((a["mean_score_new"] or 0) - (a["mean_score_old"] or 0)))
    windows = Table(title=f"Aggregates: {len(changed)} of {len(result['aggregates'])} windows changed (largest mean-score moves)")
    for column in ("window", "key", "volume old -> new", "negative old -> new", "mean score old -> new", "change"):
        windows.add_column(column, justify="left" if column in ("window", "key") else "right")
    for a in changed[:rows]:
        delta = None if a["mean_score_old"] is None or a["mean_score_new"] is None else a["mean_score_new"] - a["mean_score_old"]
        windows.add_row(
            f"{a['window_s']} s @ {a['window_start'][:19]}", f"{a['key_type']}:{a['key']}",
            f"{a['volume_old']} -> {a['volume_new']}", f"{a['negative_old']} -> {a['negative_new']}",
            f"{_signed(a['mean_score_old'])} -> {_signed(a['mean_score_new'])}", _signed(delta),
        )
    out.print(windows)
    fired = Table(title=f"Alerts of {result['subscriptions']} subscriptions: {alerts['old']} with OLD, {alerts['new']} with NEW,"
                        f" {alerts['both']} with both; {len(alerts['differences'])} differ")
    for column in ("subscription", "rule", "key", "window", "OLD", "NEW"):
        fired.add_column(column)
    for a in alerts["differences"][:rows]:
        fired.add_row(a["subscription_name"], f"{a['rule']} {a['metric']}", f"{a['key_type']}:{a['key']}",
                      f"{a['window_s']} s @ {a['window_start'][:19]}", "fires" if a["fires_old"] else "-",
                      "fires" if a["fires_new"] else "-")
    out.print(fired)


@cli.command()
def promote(
    version: Annotated[Optional[str], typer.Argument(help="A registered model version (finpulse model versions)")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint directory to register and promote; every worker must read it at this path")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Backend to compute the version with (default FINPULSE_BACKEND, as the workers)")] = None,
) -> None:
    """Make a model version live: running workers load it beside the old one and switch between batches, no restart."""
    from worker.entrypoints.live_model import shared_path
    from worker.store.models import ModelRegistry, UnknownModel

    if version is None and model is None:
        raise typer.BadParameter("give a registered VERSION or --model DIR")
    settings = Settings.from_env()
    model_dir = None
    if model is not None:
        engine = load_engine_or_exit(settings.engine, model, backend)
        if version is not None and version != engine.model_version:
            raise typer.BadParameter(f"{model} serves {engine.model_version}, not {version}", param_hint="--model")
        version, model_dir = engine.model_version, shared_path(model)
    assert version is not None

    async def run(database: Any) -> tuple[str | None, Any] | list[Any]:
        registry = ModelRegistry(database)
        if model_dir is not None:
            await registry.register(version, model_dir)
        try:
            return await registry.promote(version)
        except UnknownModel:
            return await registry.list()

    outcome = _with_store(settings, run)
    if isinstance(outcome, list):
        known = ", ".join(f"{m.model_version} ({m.role})" for m in outcome) or "none"
        err.print(f"model version {version!r} is not registered (registered: {known}); replay it with --shadow first,"
                  " or give --model DIR", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    previous, live = outcome
    if not Path(live.model_dir).is_dir():
        err.print(f"note: {live.model_dir} is not a directory on this machine; workers must find it at that path",
                  style="yellow", markup=False, highlight=False)
    if previous == live.model_version:
        err.print(f"{live.model_version} is already live")
        return
    err.print(f"live model: {previous or 'none'} -> {live.model_version} ({live.model_dir}); running workers load it and"
              f" switch within about {settings.engine.model_poll_s:g} s plus its load time (finpulse_model_info, /health)")


@model_cli.command("versions")
def versions(as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False) -> None:
    """Model versions the store knows: live, shadow (replayed beside it) and retired, with their checkpoints."""
    from worker.store.models import ModelRegistry

    found = _with_store(Settings.from_env(), lambda db: ModelRegistry(db).list())
    if as_json:
        for m in found:
            print(json.dumps({**m.__dict__, "registered_at": m.registered_at.isoformat(),
                              "promoted_at": m.promoted_at.isoformat() if m.promoted_at else None}))
        return
    table = Table(title="Model versions")
    for column in ("version", "role", "checkpoint", "registered", "promoted"):
        table.add_column(column)
    for m in found:
        table.add_row(m.model_version, m.role, m.model_dir, f"{m.registered_at:%Y-%m-%d %H:%M}",
                      f"{m.promoted_at:%Y-%m-%d %H:%M}" if m.promoted_at else "")
    out.print(table)
