"""`finpulse report`: a self-contained HTML report of a period of the SQL store (worker/report/)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.entrypoints.cli.app import cli, err, moment
from worker.settings import Settings


@cli.command()
def report(
    start: Annotated[str, typer.Option("--from", help="Start of the period (inclusive, event time), ISO 8601; UTC if no zone")],
    end: Annotated[str, typer.Option("--to", help="End of the period (exclusive), ISO 8601; UTC if no zone")],
    out: Annotated[Path, typer.Option(help="The HTML file to write")] = Path("report.html"),
    entity: Annotated[Optional[list[str]], typer.Option(
        help="An entity to chart (repeat it); default: subscribed, alerted, then the busiest")] = None,
    model_version: Annotated[Optional[str], typer.Option(help="Default: the version with the most documents in the period")] = None,
    top: Annotated[int, typer.Option(min=1, max=30, help="Entities charted when --entity is not given")] = 6,
) -> None:
    """Write an HTML report of [--from, --to): sentiment per entity and language with alerts, topics, volume,
    the most negative documents, throughput and latency. It works offline (plotly.js is inside)."""
    from rich.markup import escape
    from sqlalchemy.exc import SQLAlchemyError

    from worker.report.build import ReportError, ReportRequest, build_report
    from worker.report.page import write_page

    range_start, range_end = moment(start, "--from"), moment(end, "--to")
    settings = Settings.from_env()
    request = ReportRequest(range_start, range_end, entities=tuple(entity or ()), model_version=model_version, top=top)
    try:
        result = asyncio.run(build_report(settings.store.url, request, say=lambda line: err.print(escape(line), highlight=False)))
    except ReportError as exc:
        err.print(f"[red]no report:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        err.print(f"[red]cannot read the store:[/red] {escape(str(exc).splitlines()[0])}", highlight=False)
        raise typer.Exit(1) from None
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    try:
        path = write_page(out, result.html)
    except OSError as exc:
        err.print(f"[red]cannot write {escape(str(out))}:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    err.print(f"{result.documents} documents, {len(result.entities)} entities, {result.alerts} alerts;"
              f" report written to {escape(str(path))} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)
