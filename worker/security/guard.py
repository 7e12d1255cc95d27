"""The API's bearer-token check, as a pure ASGI middleware: it runs before anything reads the request body.

FastAPI reads and parses a body before a route's dependencies run, so a token checked in
a dependency lets anyone make the server take in a body of any size first. Here only
the `Authorization` header is looked at: without a valid token the answer is 401, with
a token that lacks the scope 403 (RFC 6750's `insufficient_scope`), and the body is
never read. GET and HEAD need the `read` scope, every other method `write`. The open
paths (health, the OpenAPI document) need no token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# A presented token -> its scopes, or None when it is unknown or revoked.
Authenticate = Callable[[str], Awaitable[frozenset[str] | None]]
READ_METHODS = ("GET", "HEAD")


class TokenGuard:
    def __init__(self, app: ASGIApp, *, authenticate: Authenticate, open_paths: Collection[str]) -> None:
        self.app = app
        self.authenticate = authenticate
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        denied = await self._denial(scope)
        if denied is None:
            await self.app(scope, receive, send)
        else:
            await denied(scope, receive, send)

    async def _denial(self, scope: Scope) -> JSONResponse | None:
        """None when the request may go on, else the answer: made from the headers alone."""
        needed = "read" if scope["method"] in READ_METHODS else "write"
        kind, _, token = (Headers(scope=scope).get("authorization") or "").partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            return _deny(401, "missing API token: send Authorization: Bearer <token>", "Bearer")
        try:
            scopes = await self.authenticate(token)
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, the answer is "try later"
            return _deny(503, f"cannot check the token: SQL store unreachable ({type(exc).__name__})", None)
        if scopes is None:
            return _deny(401, "invalid API token", 'Bearer error="invalid_token"')
        if needed not in scopes:
            return _deny(403, f"this token lacks the {needed!r} scope", f'Bearer error="insufficient_scope", scope="{needed}"')
        return None


def _deny(status: int, detail: str, challenge: str | None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status, headers={"WWW-Authenticate": challenge} if challenge else None)
