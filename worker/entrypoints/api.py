"""HTTP API (`finpulse api`): alert subscriptions, aggregate series and fired alerts over the SQL store.

It is a process of its own, beside the workers rather than inside them: it needs no
Kafka and no model, restarts without touching a consumer group, and scales on its own.
It writes subscriptions only to SQL, the source of truth that every worker reloads
(`FINPULSE_SUBSCRIPTIONS_REFRESH_S`), so a change reaches running workers without a restart.

Reads are open: they show aggregate sentiment and alerts, the worker's output. Writes
need the bearer token `FINPULSE_API_TOKEN`, because a subscription makes the workers
POST to a URL of the subscriber's choosing; without a token, writes are switched off.
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
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import text

from schemas.aggregates import WindowAggregate
from schemas.alerts import Alert, KeyType, Subscription, SubscriptionSpec
from worker.settings import Settings
from worker.stages.aggregates import as_utc
from worker.store.database import make_engine
from worker.store.subscriptions import SubscriptionError, SubscriptionRepository, validate_spec
from worker.store.unit_of_work import reading

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0
BEARER = HTTPBearer(auto_error=False, description="FINPULSE_API_TOKEN; needed for POST, PUT and DELETE")


class Health(BaseModel):
    status: Literal["ok"]


class Problem(BaseModel):
    detail: str


class Invalid(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="FastAPI's list of validation errors, or one message")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: (Problem, "No bearer token, or the wrong one"),
        404: (Problem, "No subscription with this id"),
        422: (Invalid, "Invalid request: what the schema refuses, or what the workers could not run"),
        503: (Problem, "Writes are disabled (FINPULSE_API_TOKEN unset), or the SQL store is unreachable"),
    }
    return {code: {"model": described[code][0], "description": described[code][1]} for code in codes}


def _utc(moment: datetime | None) -> datetime | None:
    """Query times without an offset are taken as UTC."""
    return as_utc(moment) if moment is not None else None


def create_api(settings: Settings) -> FastAPI:
    engine = make_engine(settings.store.url)
    repository = SubscriptionRepository(engine)
    windows = settings.store.windows
    token = settings.api.token

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(
        title="finpulse API",
        version="1",
        description="Alert subscriptions, windowed sentiment aggregates and fired alerts. "
        "Reads are open; writes need `Authorization: Bearer <FINPULSE_API_TOKEN>`.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with where and why, never the input itself: it may be huge, or a NaN that JSON cannot carry."""
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()[:20]]
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": jsonable_encoder(errors)})

    async def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not token:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "writes are disabled: set FINPULSE_API_TOKEN")
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API token: send Authorization: Bearer <FINPULSE_API_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "invalid API token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )

    async def checked(spec: SubscriptionSpec) -> SubscriptionSpec:
        try:  # in a thread: the webhook check resolves the host name
            await run_in_threadpool(
                validate_spec, spec, windows=windows, allow_private_webhooks=settings.webhooks.allow_private
            )
        except SubscriptionError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        return spec

    def not_found(subscription_id: str) -> HTTPException:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no subscription {subscription_id!r}")

    writes: dict[str, Any] = {"dependencies": [Depends(require_token)], "tags": ["subscriptions"]}

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

    @app.post("/subscriptions", status_code=status.HTTP_201_CREATED, responses=_problems(401, 422, 503), **writes)
    async def create_subscription(spec: SubscriptionSpec) -> Subscription:
        """Create a subscription. The answer shows its webhook secret (given or generated): the only time it is shown."""
        return await repository.create(await checked(spec))

    @app.get("/subscriptions", tags=["subscriptions"])
    async def list_subscriptions() -> list[Subscription]:
        """Every subscription, oldest first; webhook secrets are never shown here."""
        return await repository.list()

    @app.get("/subscriptions/{subscription_id}", tags=["subscriptions"], responses=_problems(404))
    async def get_subscription(subscription_id: str) -> Subscription:
        found = await repository.get(subscription_id)
        if found is None:
            raise not_found(subscription_id)
        return found

    @app.put("/subscriptions/{subscription_id}", responses=_problems(401, 404, 422, 503), **writes)
    async def replace_subscription(subscription_id: str, spec: SubscriptionSpec) -> Subscription:
        """Replace a subscription's definition. A webhook keeps its secret unless one is given; a new one is shown once."""
        replaced = await repository.replace(subscription_id, await checked(spec))
        if replaced is None:
            raise not_found(subscription_id)
        return replaced

    @app.delete(
        "/subscriptions/{subscription_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=_problems(401, 404, 503),
        **writes,
    )
    async def delete_subscription(subscription_id: str) -> None:
        """Delete a subscription; its fired alerts stay."""
        if not await repository.delete(subscription_id):
            raise not_found(subscription_id)

    @app.get("/aggregates", tags=["aggregates"], responses=_problems(422))
    async def aggregates(
        key_type: KeyType,
        key: Annotated[str, Query(description="e.g. TSLA for an entity; `*` for key_type global")],
        window_s: Annotated[int, Query(description="Window size, seconds: one of FINPULSE_WINDOWS")] = 60,
        since: Annotated[datetime | None, Query(description="Windows starting at or after this (UTC if no offset)")] = None,
        until: Annotated[datetime | None, Query(description="Windows starting before this (UTC if no offset)")] = None,
        model_version: Annotated[str | None, Query(description="Only this model's scores (default: every model)")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="The latest this many points")] = 1000,
    ) -> list[WindowAggregate]:
        """One key's sentiment per window, oldest first: the latest `limit` points in the range, one per model version."""
        if window_s not in windows:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"window_s={window_s} is not one of the worker's windows {windows} (FINPULSE_WINDOWS)",
            )
        async with reading(engine) as store:
            return await store.aggregates.series(
                key_type=key_type, key=key, window_s=window_s, since=_utc(since), until=_utc(until),
                model_version=model_version, limit=limit,
            )

    @app.get("/alerts", tags=["alerts"])
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
