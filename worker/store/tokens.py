"""API bearer tokens: made and revoked with `finpulse tokens`, checked by the API on every request.

A token is `fp_` and 32 random bytes (`secrets.token_urlsafe`), shown once when made.
Only its SHA-256 is stored: a fast hash is enough for a random secret of that length (no
dictionary to try, as GitHub reasons for its tokens), and it lets the API find a token
with one indexed lookup. A short prefix is kept to tell tokens apart in a list. Revoking
keeps the row (when it was made, last used, revoked) and frees its name.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import ApiTokenRow
from worker.stages.aggregates import as_utc

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
TOKEN_PREFIX = "fp_"
MIN_TOKEN_CHARS = 32  # FINPULSE_API_TOKEN too: shorter ones could be guessed
SHOWN_CHARS = 8
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is this precise, so a busy token is not a write per request


class ApiToken(BaseModel):
    """A stored token as listed: never the token, only its first characters."""

    id: str
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _to_model(row: ApiTokenRow) -> ApiToken:
    return ApiToken.model_validate({field: getattr(row, field) for field in ApiToken.model_fields})


class TokenRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, name: str, scopes: Sequence[Scope]) -> tuple[ApiToken, str]:
        """A new token and, this once, the token itself. A name in use by an active token raises IntegrityError."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ApiTokenRow(
            id=str(uuid.uuid4()), name=name, prefix=token[:SHOWN_CHARS], token_hash=token_hash(token),
            scopes=[s for s in SCOPES if s in scopes], created_at=datetime.now(UTC), last_used_at=None, revoked_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(ApiTokenRow.__table__.insert().values(
                **{c.key: getattr(row, c.key) for c in ApiTokenRow.__table__.columns}
            ))
        return _to_model(row), token

    async def list(self) -> list[ApiToken]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.id))).all()
        return [_to_model(ApiTokenRow(**r._mapping)) for r in rows]

    async def revoke(self, name_or_id: str) -> ApiToken | None:
        """Revoke the active token of this name, or the token of this id; None if there is none."""
        table = ApiTokenRow.__table__
        match = (table.c.revoked_at.is_(None)) & or_(table.c.name == name_or_id, table.c.id == name_or_id)
        async with self.engine.begin() as conn:
            found = (await conn.execute(select(ApiTokenRow).where(match))).first()
            if found is None:
                return None
            now = datetime.now(UTC)
            await conn.execute(update(table).where(table.c.id == found.id).values(revoked_at=now))
        return _to_model(ApiTokenRow(**{**found._mapping, "revoked_at": now}))

    async def scopes_of(self, token: str) -> frozenset[str] | None:
        """The scopes of an active token, or None; notes when it was used."""
        if len(token) < MIN_TOKEN_CHARS:
            return None
        table = ApiTokenRow.__table__
        digest = token_hash(token)
        async with self.engine.connect() as conn:
            found = (await conn.execute(
                select(table.c.scopes, table.c.last_used_at).where(table.c.token_hash == digest, table.c.revoked_at.is_(None))
            )).first()
        if found is None:
            return None
        now = datetime.now(UTC)
        if found.last_used_at is None or as_utc(found.last_used_at) < now - TOUCH_EVERY:
            async with self.engine.begin() as conn:
                await conn.execute(update(table).where(table.c.token_hash == digest).values(last_used_at=now))
        return frozenset(found.scopes)
