"""Alert subscriptions in the SQL store: one repository for the API, the CLI and the workers.

The SQL store is the source of truth. Workers reload the enabled subscriptions every
`FINPULSE_SUBSCRIPTIONS_REFRESH_S` seconds (`LiveSubscriptions`), so a subscription made
through the API or the CLI reaches every running worker within that time, no restart.

Webhook secrets are stored encrypted (`worker/security/secret_box.py`): the repository
seals them on the way in and shows one only in the answer that created it; the outbox
opens them to sign. Webhook URLs come out redacted: the full URL stays in SQL.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import TypeAdapter
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.alerts import ANY_KEY, Rule, Subscription, SubscriptionSpec
from schemas.tables import SubscriptionRow
from worker.delivery.webhooks import WebhookRefused, check_webhook_url, redact
from worker.security.secret_box import SecretBox, SecretUnreadable
from worker.store.database import make_engine

if TYPE_CHECKING:
    from worker.settings import WebhookSettings

_RULE = TypeAdapter(Rule)
log = logging.getLogger(__name__)


class SubscriptionError(ValueError):
    """A subscription the worker could never evaluate or deliver; the API answers 422."""


def validate_spec(spec: SubscriptionSpec, *, windows: Sequence[int], webhooks: WebhookSettings) -> None:
    """What the schema cannot check: the worker's windows, the global key, the webhook's address (SSRF).

    Raises SubscriptionError for every refusal, so callers catch one type.
    """
    if spec.window_s not in windows:
        raise SubscriptionError(f"window_s={spec.window_s} is not one of the worker's windows {list(windows)} (FINPULSE_WINDOWS)")
    if spec.key_type == "global" and spec.key != ANY_KEY:
        raise SubscriptionError(f"key_type 'global' has the single key {ANY_KEY!r}")
    if spec.webhook_url is not None:
        try:
            check_webhook_url(str(spec.webhook_url), webhooks)
        except WebhookRefused as exc:
            raise SubscriptionError(str(exc)) from exc


def _to_model(row: SubscriptionRow, secret: str | None = None) -> Subscription:
    """The row as shown: the URL redacted, and the secret only when the caller hands it in (once, when made)."""
    return Subscription(
        id=row.id,
        name=row.name,
        key_type=row.key_type,  # type: ignore[arg-type]
        key=row.key,
        rule=_RULE.validate_python(row.rule),
        window_s=row.window_s,
        cooldown_s=row.cooldown_s,
        webhook_url=redact(row.webhook_url) if row.webhook_url else None,
        webhook_secret=secret,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _columns(spec: SubscriptionSpec, stored_secret: str | None) -> dict[str, object]:
    return {
        "name": spec.name,
        "key_type": spec.key_type,
        "key": spec.key,
        "window_s": spec.window_s,
        "rule": spec.rule.model_dump(mode="json"),
        "cooldown_s": spec.cooldown_s,
        "webhook_url": str(spec.webhook_url) if spec.webhook_url else None,
        "webhook_secret": stored_secret if spec.webhook_url else None,
        "enabled": spec.enabled,
    }


class SubscriptionRepository:
    def __init__(self, engine: AsyncEngine, box: SecretBox | None = None) -> None:
        self.engine = engine
        self.box = box or SecretBox([])  # without keys: no webhook can be stored

    async def create(self, spec: SubscriptionSpec) -> Subscription:
        """Store a new subscription; the answer shows its webhook secret, this once. Raises SecretKeyMissing."""
        now = datetime.now(UTC)
        secret = (spec.webhook_secret or secrets.token_urlsafe(32)) if spec.webhook_url else None
        stored = self.box.seal(secret) if secret else None
        row = SubscriptionRow(id=str(uuid.uuid4()), created_at=now, updated_at=now, **_columns(spec, stored))
        async with self.engine.begin() as conn:
            await conn.execute(SubscriptionRow.__table__.insert().values(**_row_dict(row)))
        return _to_model(row, secret)

    async def replace(self, subscription_id: str, spec: SubscriptionSpec) -> Subscription | None:
        """Replace a subscription's definition; a webhook keeps its secret unless a new one is given (and shown once)."""
        given = self.box.seal(spec.webhook_secret) if spec.webhook_url and spec.webhook_secret else None
        async with self.engine.begin() as conn:
            found = (
                await conn.execute(select(SubscriptionRow).where(SubscriptionRow.id == subscription_id))
            ).first()
            if found is None:
                return None
            old = SubscriptionRow(**found._mapping)
            shown = spec.webhook_secret if given else None
            stored = given or old.webhook_secret
            if spec.webhook_url and stored is None:  # a webhook added: a secret of its own
                shown = secrets.token_urlsafe(32)
                stored = self.box.seal(shown)
            values = {**_columns(spec, stored), "updated_at": datetime.now(UTC)}
            await conn.execute(
                SubscriptionRow.__table__.update().where(SubscriptionRow.id == subscription_id).values(**values)
            )
        return _to_model(SubscriptionRow(**{**_row_dict(old), **values}), shown)

    async def delete(self, subscription_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(SubscriptionRow).where(SubscriptionRow.id == subscription_id))
        return bool(result.rowcount)

    async def get(self, subscription_id: str) -> Subscription | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(SubscriptionRow).where(SubscriptionRow.id == subscription_id))).first()
        return _to_model(SubscriptionRow(**found._mapping)) if found else None

    async def list(self, *, enabled_only: bool = False) -> list[Subscription]:
        query = select(SubscriptionRow).order_by(SubscriptionRow.created_at, SubscriptionRow.id)
        if enabled_only:
            query = query.where(SubscriptionRow.enabled.is_(True))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_to_model(SubscriptionRow(**r._mapping)) for r in rows]

    async def rotate_secrets(self) -> tuple[int, list[str]]:
        """Re-encrypt every stored webhook secret under the first key (plain ones too).

        Returns how many were re-encrypted and the ids of those no key opens, which stay as
        they are. Each row is rewritten only if unchanged since it was read, so a secret
        replaced meanwhile is not overwritten with the old one.
        """
        table = SubscriptionRow.__table__
        query = select(table.c.id, table.c.webhook_secret).where(table.c.webhook_secret.is_not(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        done, unreadable = 0, []
        for subscription_id, stored in rows:
            try:
                resealed = self.box.reseal(stored)
            except SecretUnreadable:
                unreadable.append(subscription_id)
                continue
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(table).where(table.c.id == subscription_id, table.c.webhook_secret == stored)
                    .values(webhook_secret=resealed)
                )
            done += result.rowcount
        return done, unreadable


@asynccontextmanager
async def open_repository(database_url: str, box: SecretBox | None = None) -> AsyncIterator[SubscriptionRepository]:
    """A repository on a short-lived engine, for one-off callers: the CLI, the demo, tests."""
    engine = make_engine(database_url)
    try:
        yield SubscriptionRepository(engine, box)
    finally:
        await engine.dispose()


def _row_dict(row: SubscriptionRow) -> dict[str, object]:
    return {c.key: getattr(row, c.key) for c in SubscriptionRow.__table__.columns}


class LiveSubscriptions:
    """The enabled subscriptions as a worker sees them: reloaded when older than `refresh_s`."""

    def __init__(self, repository: SubscriptionRepository, refresh_s: float) -> None:
        self.repository = repository
        self.refresh_s = refresh_s
        self._loaded_at = float("-inf")
        self._current: list[Subscription] = []

    async def current(self) -> list[Subscription]:
        """The latest list; while the store is unreachable, the last one loaded (the write retries anyway)."""
        if time.monotonic() - self._loaded_at >= self.refresh_s:
            try:
                self._current = await self.repository.list(enabled_only=True)  # the outbox reads URLs and secrets itself
            except Exception as exc:  # noqa: BLE001 - any store failure: keep evaluating with what we have
                log.warning("could not reload subscriptions (%s); keeping %d", type(exc).__name__, len(self._current))
            self._loaded_at = time.monotonic()
        return self._current
