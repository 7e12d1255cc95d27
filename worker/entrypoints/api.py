"""HTTP API (`finpulse api`): alert subscriptions, aggregate series and fired alerts over the SQL store.

It is a process of its own, beside the workers rather than inside them: it needs no
Kafka and no model, restarts without touching a consumer group, and scales on its own.
It writes subscriptions only to SQL, the source of truth that every worker reloads
(`FINPULSE_SUBSCRIPTIONS_REFRESH_S`), so a change reaches running workers without a restart.

Every route but `/health` and the OpenAPI document needs a bearer token: one made with
`finpulse tokens create` (scopes `read`, `write`; stored hashed, revocable), or the
bootstrap `FINPULSE_API_TOKEN`, which has every scope. The token is checked by an ASGI
middleware before the body is read (`worker/security/guard.py`); bodies are capped at
`FINPULSE_API_MAX_BODY_BYTES` (413), and only the Host names in
`FINPULSE_API_ALLOWED_HOSTS` are answered, so a web page cannot reach an API on
localhost through DNS rebinding (400).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.middleware.trustedhost import TrustedHostMiddleware

from schemas.aggregates import WindowAggregate
from schemas.alerts import Alert, KeyType, Subscription, SubscriptionSpec
from worker.security.guard import TokenGuard
from worker.security.secret_box import SecretBox, SecretKeyMissing
from worker.settings import Settings
from worker.stages.aggregates import as_utc
from worker.store.database import make_engine
from worker.store.models import ModelRegistry
from worker.store.subscriptions import SubscriptionError, SubscriptionRepository, validate_spec
from worker.store.tokens import MIN_TOKEN_CHARS, SCOPES, TokenRepository
from worker.store.unit_of_work import reading

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0
# For the OpenAPI document only: TokenGuard checks the token, before FastAPI reads the body.
BEARER = HTTPBearer(auto_error=False, description="A token from `finpulse tokens create`, or FINPULSE_API_TOKEN")
SECURED: dict[str, Any] = {"dependencies": [Depends(BEARER)]}
ECHO_CHARS = 200  # of a validation message or location: they may quote the input


class Health(BaseModel):
    status: Literal["ok"]


class Problem(BaseModel):
    detail: str


class Invalid(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="FastAPI's list of validation errors, or one message")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: (Problem, "No bearer token, or an unknown or revoked one"),
        403: (Problem, "The token lacks the scope: `read` for GET, `write` for the rest"),
        404: (Problem, "No subscription with this id"),
        413: (Problem, "The body is larger than FINPULSE_API_MAX_BODY_BYTES"),
        422: (Invalid, "Invalid request: what the schema refuses, or what the workers could not run"),
        503: (Problem, "The SQL store is unreachable, or no FINPULSE_SECRET_KEYS to encrypt a webhook secret with"),
    }
    return {code: {"model": described[code][0], "description": described[code][1]} for code in codes}


def _utc(moment: datetime | None) -> datetime | None:
    """Query times without an offset are taken as UTC."""
    return as_utc(moment) if moment is not None else None


def create_api(settings: Settings) -> FastAPI:
    """The app; raises ValueError for a FINPULSE_API_TOKEN too short to be safe or a malformed secret key."""
    bootstrap = settings.api.token
    if bootstrap and len(bootstrap) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"FINPULSE_API_TOKEN has {len(bootstrap)} characters; use at least {MIN_TOKEN_CHARS}, e.g."
            " `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or tokens from `finpulse tokens create`"
        )
    box = SecretBox(settings.webhooks.secret_keys or [])
    engine = make_engine(settings.store.url)
    repository = SubscriptionRepository(engine, box)
    tokens = TokenRepository(engine)
    registry = ModelRegistry(engine)
    windows = settings.store.windows
    every_scope = frozenset(SCOPES)

    async def authenticate(presented: str) -> frozenset[str] | None:
        if bootstrap and hmac.compare_digest(presented.encode(), bootstrap.encode()):
            return every_scope
        return await tokens.scopes_of(presented)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(
        title="finpulse API",
        version="1",
        description="Alert subscriptions, windowed sentiment aggregates and fired alerts. Every route but /health "
        "needs `Authorization: Bearer <token>`: the `read` scope for GET, `write` for POST, PUT and DELETE.",
        lifespan=lifespan,
        max_body_size=settings.api.max_body_bytes,
    )
    open_paths = {"/health", app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url}
    app.add_middleware(TokenGuard, authenticate=authenticate, open_paths={p for p in open_paths if p})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.api.allowed_hosts)  # outermost: runs first

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with where and why, never the input itself: it may be huge, or a NaN that JSON cannot carry."""
        errors = [
            {
                "type": e["type"],
                "loc": [part[:ECHO_CHARS] if isinstance(part, str) else part for part in e["loc"]],
                "msg": e["msg"][:ECHO_CHARS],
            }
            for e in exc.errors()[:20]
        ]
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": jsonable_encoder(errors)})

    async def checked(spec: SubscriptionSpec) -> SubscriptionSpec:
        try:  # in a thread: the webhook check resolves the host name
            await run_in_threadpool(validate_spec, spec, windows=windows, webhooks=settings.webhooks)
        except SubscriptionError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        return spec

    def no_key(exc: SecretKeyMissing) -> HTTPException:
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))

    def not_found(subscription_id: str) -> HTTPException:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no subscription {subscription_id!r}")

    @app.get("/health", tags=["health"], responses=_problems(503))
    async def health() -> Health:
        """`ok` once the SQL store answers `SELECT 1`."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # whatever the driver raises, the answer is "unhealthy"
            log.warning("health: SQL store unreachable: %r", exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"SQL store unreachable ({type(exc).__name__})"
            ) from exc
        return Health(status="ok")

    @app.post(
        "/subscriptions", status_code=status.HTTP_201_CREATED, tags=["subscriptions"],
        responses=_problems(401, 403, 413, 422, 503), **SECURED,
    )
    async def create_subscription(spec: SubscriptionSpec) -> Subscription:
        """Create a subscription. The answer shows its webhook secret (given or generated): the only time it is shown."""
        try:
            return await repository.create(await checked(spec))
        except SecretKeyMissing as exc:
            raise no_key(exc) from exc

    @app.get("/subscriptions", tags=["subscriptions"], responses=_problems(401, 403), **SECURED)
    async def list_subscriptions() -> list[Subscription]:
        """Every subscription, oldest first; webhook URLs redacted, secrets never shown here."""
        return await repository.list()

    @app.get("/subscriptions/{subscription_id}", tags=["subscriptions"], responses=_problems(401, 403, 404), **SECURED)
    async def get_subscription(subscription_id: str) -> Subscription:
        found = await repository.get(subscription_id)
        if found is None:
            raise not_found(subscription_id)
        return found

    @app.put(
        "/subscriptions/{subscription_id}", tags=["subscriptions"], responses=_problems(401, 403, 404, 413, 422, 503), **SECURED
    )
    async def replace_subscription(subscription_id: str, spec: SubscriptionSpec) -> Subscription:
        """Replace a subscription's definition. A webhook keeps its secret unless one is given; a new one is shown once."""
        try:
            replaced = await repository.replace(subscription_id, await checked(spec))
        except SecretKeyMissing as exc:
            raise no_key(exc) from exc
        if replaced is None:
            raise not_found(subscription_id)
        return replaced

    @app.delete(
        "/subscriptions/{subscription_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        tags=["subscriptions"],
        responses=_problems(401, 403, 404),
        **SECURED,
    )
    async def delete_subscription(subscription_id: str) -> None:
        """Delete a subscription; its fired alerts stay."""
        if not await repository.delete(subscription_id):
            raise not_found(subscription_id)

    @app.get("/aggregates", tags=["aggregates"], responses=_problems(401, 403, 422), **SECURED)
    async def aggregates(
        key_type: KeyType,
        key: Annotated[str, Query(description="e.g. TSLA for an entity; `*` for key_type global")],
        window_s: Annotated[int, Query(description="Window size, seconds: one of FINPULSE_WINDOWS")] = 60,
        since: Annotated[datetime | None, Query(description="Windows starting at or after this (UTC if no offset)")] = None,
        until: Annotated[datetime | None, Query(description="Windows starting before this (UTC if no offset)")] = None,
        model_version: Annotated[
            str | None, Query(description="This model's scores (default: the live one; every model while none is registered)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="The latest this many points")] = 1000,
    ) -> list[WindowAggregate]:
        """One key's sentiment per window, oldest first: the latest `limit` points in the range, of the live model
        (`finpulse promote`) unless `model_version` names another, e.g. a shadow one."""
        if window_s not in windows:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"window_s={window_s} is not one of the worker's windows {windows} (FINPULSE_WINDOWS)",
            )
        if model_version is None:
            live = await registry.live()
            model_version = live.model_version if live else None
        async with reading(engine) as store:
            return await store.aggregates.series(
                key_type=key_type, key=key, window_s=window_s, since=_utc(since), until=_utc(until),
                model_version=model_version, limit=limit,
            )

    @app.get("/alerts", tags=["alerts"], responses=_problems(401, 403, 422), **SECURED)
    async def alerts(
        subscription_id: str | None = None,
        key_type: KeyType | None = None,
        key: str | None = None,
        since: Annotated[datetime | None, Query(description="Fired at or after this (UTC if no offset)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Alert]:
        """Fired alerts, newest first."""
        async with reading(engine) as store:
            return await store.alerts.list(
                subscription_id=subscription_id, key_type=key_type, key=key, since=_utc(since), limit=limit
            )

    return app
