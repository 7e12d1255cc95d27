"""`finpulse tokens create | list | revoke` and `finpulse secrets generate-key | rotate`: who may use the API,
and the keys webhook secrets are encrypted with. Both act on the SQL store (FINPULSE_DATABASE_URL) directly."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from worker.entrypoints.cli.app import err, secrets_cli, tokens_cli
from worker.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def _on_store(action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `action` on a short-lived engine."""
    from worker.store.database import make_engine

    async def run() -> T:
        engine = make_engine(Settings.from_env().store.url)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@tokens_cli.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. grafana; unique among active tokens")],
    scope: Annotated[list[str], typer.Option(help="read (GET) or write (POST, PUT, DELETE); repeat for both")] = ["read"],  # noqa: B006
) -> None:
    """Make a token and print it on standard output: the only time it is shown (only its hash is stored)."""
    from sqlalchemy.exc import IntegrityError

    from worker.store.tokens import SCOPES, TokenRepository

    unknown = sorted(set(scope) - set(SCOPES))
    if unknown or not name.strip() or len(name) > 128:
        problem = f"unknown scope {unknown[0]!r} (read, write)" if unknown else "a name of 1 to 128 characters"
        err.print(f"invalid token: {problem}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    try:
        made, token = _on_store(lambda engine: TokenRepository(engine).create(name.strip(), scope))  # type: ignore[arg-type]
    except IntegrityError:
        err.print(f"an active token is named {name.strip()!r}: revoke it or pick another name", style="red", markup=False)
        raise typer.Exit(1) from None
    sys.stdout.write(token + "\n")
    err.print(f"token {made.name!r} ({', '.join(made.scopes)}) created, id {made.id}; it is shown this once",
              markup=False, highlight=False)


@tokens_cli.command("list")
def tokens_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output instead of a table")] = False,
) -> None:
    """Every token, active and revoked, oldest first: its first characters, never the token."""
    from rich.table import Table

    from worker.store.tokens import TokenRepository

    found = _on_store(lambda engine: TokenRepository(engine).list())
    if as_json:
        sys.stdout.write(json.dumps([t.model_dump(mode="json") for t in found], indent=2) + "\n")
        return
    table = Table(title=f"{len(found)} token(s)")
    table.add_column("id", no_wrap=True)
    for column in ("name", "starts", "scopes", "created", "last used", "revoked"):
        table.add_column(column, overflow="fold")

    def when(moment: object) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else ""

    for t in found:
        table.add_row(t.id, t.name, t.prefix + "…", ",".join(t.scopes), when(t.created_at), when(t.last_used_at),
                      when(t.revoked_at))
    Console().print(table)


@tokens_cli.command("revoke")
def tokens_revoke(name_or_id: Annotated[str, typer.Argument(help="An active token's name, or a token's id")]) -> None:
    """Revoke a token: the API refuses it from the next request on."""
    from worker.store.tokens import TokenRepository

    revoked = _on_store(lambda engine: TokenRepository(engine).revoke(name_or_id))
    if revoked is None:
        err.print(f"no active token {name_or_id!r}", style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    err.print(f"token {revoked.name!r} ({revoked.id}) revoked", markup=False, highlight=False)


@secrets_cli.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key for FINPULSE_SECRET_KEYS (put it first to rotate, then run `finpulse secrets rotate`)."""
    from worker.security.secret_box import generate_key

    sys.stdout.write(generate_key() + "\n")


@secrets_cli.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored webhook secret under the first key of FINPULSE_SECRET_KEYS (plain ones too).

    Afterwards the other keys can be dropped. Exit code 1 if some secret no configured key opens.
    """
    from worker.security.secret_box import SecretBox
    from worker.store.subscriptions import SubscriptionRepository

    keys = Settings.from_env().webhooks.secret_keys
    if not keys:
        err.print("FINPULSE_SECRET_KEYS is unset: make a key with `finpulse secrets generate-key`", style="red", markup=False)
        raise typer.Exit(2)
    try:
        box = SecretBox(keys)
    except ValueError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    done, unreadable = _on_store(lambda engine: SubscriptionRepository(engine, box).rotate_secrets())
    err.print(f"{done} webhook secret(s) encrypted under the first key", markup=False)
    if unreadable:
        err.print(f"{len(unreadable)} secret(s) no configured key opens, left as they are: {', '.join(unreadable)}",
                  style="red", markup=False, highlight=False)
        raise typer.Exit(1)
