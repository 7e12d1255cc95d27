"""`finpulse subscriptions add | list | rm`: alert subscriptions written straight to the SQL store."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from worker.entrypoints.cli.app import err, subscriptions_cli
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.store.subscriptions import SubscriptionRepository

T = TypeVar("T")


def _with_subscriptions(action: Callable[[SubscriptionRepository], Awaitable[T]]) -> T:
    """Run one repository call on a short-lived engine."""
    from worker.security.secret_box import SecretBox
    from worker.store.subscriptions import open_repository

    settings = Settings.from_env()

    async def run() -> T:
        async with open_repository(settings.store.url, SecretBox(settings.webhooks.secret_keys or [])) as repository:
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
    from worker.security.secret_box import SecretKeyMissing
    from worker.store.subscriptions import SubscriptionError, validate_spec

    settings = Settings.from_env()
    try:
        rule_value = json.loads(rule)
    except ValueError as exc:
        raise _invalid(f"--rule is not JSON: {exc}") from None
    payload = {"name": name, "key_type": key_type, "key": key, "rule": rule_value, "window_s": window,
               "cooldown_s": cooldown, "webhook_url": webhook, "webhook_secret": secret, "enabled": not disabled}
    try:
        spec = SubscriptionSpec.model_validate(payload)
        validate_spec(spec, windows=settings.store.windows, webhooks=settings.webhooks)
    except ValidationError as exc:
        raise _invalid("; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())) from None
    except SubscriptionError as exc:
        raise _invalid(str(exc)) from None
    try:
        created = _with_subscriptions(lambda repository: repository.create(spec))
    except (SecretKeyMissing, ValueError) as exc:  # no key, or a malformed one
        err.print(f"cannot store the webhook secret: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    sys.stdout.write(created.model_dump_json(indent=2) + "\n")
    err.print(f"[green]subscription {created.id} created[/green]")


@subscriptions_cli.command("list")
def subscriptions_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output instead of a table")] = False,
) -> None:
    """Every subscription, oldest first (webhook URLs redacted, secrets not shown)."""
    from rich.table import Table

    found = _with_subscriptions(lambda repository: repository.list())
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
    if not _with_subscriptions(lambda repository: repository.delete(subscription_id)):
        err.print(f"no subscription {subscription_id!r}", style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    err.print(f"subscription {subscription_id} deleted")
