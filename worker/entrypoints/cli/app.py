"""The `finpulse` command's groups and what its commands share: the console, progress, loading a model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker import logs
from worker.settings import EngineSettings, PipelineSettings, Settings

if TYPE_CHECKING:
    from engines import Engine

cli = typer.Typer(help="finpulse: streaming multilingual financial sentiment monitoring.", no_args_is_help=True)
db_cli = typer.Typer(help="SQL store schema.", no_args_is_help=True)
model_cli = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
subscriptions_cli = typer.Typer(help="Alert subscriptions in the SQL store (FINPULSE_DATABASE_URL).", no_args_is_help=True)
tokens_cli = typer.Typer(help="API bearer tokens in the SQL store: shown once, stored hashed.", no_args_is_help=True)
secrets_cli = typer.Typer(help="Keys that encrypt webhook secrets at rest (FINPULSE_SECRET_KEYS).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(model_cli, name="model")
cli.add_typer(subscriptions_cli, name="subscriptions")
cli.add_typer(tokens_cli, name="tokens")
cli.add_typer(secrets_cli, name="secrets")
err = Console(stderr=True)


def setup_logging(level: str, settings: Settings | None = None) -> None:
    """Text lines, or JSON lines when the settings say so (FINPULSE_LOG_FORMAT)."""
    if settings is None:
        logs.setup(level)
    else:
        logs.setup(level, settings.log_format, settings.namespace)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,  # a log file gets the summary line, not a frozen bar
    )


def moment(value: str, option: str) -> datetime:
    """An ISO 8601 option value; UTC when it has no offset."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-11-28T08:00:00Z", param_hint=option) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def load_engine_or_exit(settings: EngineSettings, model: str | None = None, backend: str | None = None) -> Engine:
    """The configured model (or --model/--backend) after one health check, or one clear line and exit code 2."""
    from engines import load_engine

    try:
        engine = load_engine(
            model or settings.model_dir,
            backend or settings.backend,
            max_length=settings.max_length,
            token_budget=settings.token_budget,
            threads=settings.threads,
            max_chunks=settings.max_chunks,
        )
        engine.health()  # one forward pass: a broken model fails here, not on the first batch
        return engine
    except (OSError, ValueError, RuntimeError) as exc:
        err.print(f"[red]cannot load the model {model or settings.model_dir!r}: {str(exc).splitlines()[0]}[/red]")
        err.print("point FINPULSE_MODEL_DIR (or --model) at a checkpoint directory, e.g. `finpulse model tiny models/current`")
        raise typer.Exit(2) from exc


def check_language_detector(settings: PipelineSettings) -> None:
    """Refuse an unknown FINPULSE_LANGUAGES code now; the models themselves load on the first item
    without `lang` (worker/stages/language.py), so producers that tag every item never wait for them."""
    if settings.detect_language:
        from worker.stages.language import LanguageDetector

        try:
            LanguageDetector(settings.languages)
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
