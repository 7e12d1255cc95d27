"""Webhook delivery: signed, idempotent POSTs to subscribers, and refusal of internal addresses.

Each POST carries the alert as JSON and three headers:

- `Idempotency-Key`: the alert id — the same on every retry, so a receiver stores it once;
- `X-Finpulse-Timestamp`: Unix seconds when this attempt was signed;
- `X-Finpulse-Signature`: `sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"` under the
  subscription's secret (`verify_signature` shows a receiver how to check it).

A URL whose host resolves to a private, loopback, link-local, multicast or reserved
address is refused (server-side request forgery: a subscriber must not make the worker
call into its own network), when the subscription is made and again before each POST,
unless `FINPULSE_WEBHOOK_ALLOW_PRIVATE=true`. The POST then goes to the address that was
checked, so a second DNS answer (rebinding) cannot turn it inward; redirects are not
followed, for the same reason. A host that does not resolve at delivery is retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

SIGNATURE_HEADER = "X-Finpulse-Signature"
TIMESTAMP_HEADER = "X-Finpulse-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class WebhookRefused(ValueError):
    """The URL may not be called: bad scheme, no host, or an internal address."""


class WebhookUnresolvable(WebhookRefused):
    """The host does not resolve: refused for a new subscription, retried at delivery (DNS may come back)."""


def check_webhook_url(url: str, *, allow_private: bool) -> str | None:
    """Refuse what may not be called; return the checked address to connect to (None if none was looked up)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook URL must be http or https, not {parts.scheme or 'nothing'!r}")
    if not parts.hostname:
        raise WebhookRefused("webhook URL has no host")
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise WebhookUnresolvable(f"webhook host {parts.hostname!r} does not resolve: {exc.strerror}") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"webhook host {parts.hostname!r} resolves to {address}, a private, loopback, link-local or reserved"
                " address; set FINPULSE_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
    return str(addresses[0])


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The request to `address` itself, so a second DNS answer (rebinding) cannot redirect it inward.

    Returns the URL with the address as its host, the Host header, and for https the TLS
    server name, under which the certificate is still checked against the real host name.
    """
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = f"[{address}]" if ":" in address else address
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"Host": hostport}, extensions


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: float = 300) -> bool:
    """What a receiver does: recompute the HMAC over the raw body and reject stale timestamps."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, body))


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    retry: bool  # worth trying again later (network error, 5xx, 408, 429)
    detail: str


async def post_alert(
    client: httpx.AsyncClient, url: str, secret: str, alert_id: str, body: bytes, *, allow_private: bool
) -> DeliveryResult:
    """One attempt; never raises."""
    try:  # the DNS lookup blocks, so it runs off the event loop
        address = await asyncio.to_thread(check_webhook_url, url, allow_private=allow_private)
    except WebhookRefused as exc:
        return DeliveryResult(False, isinstance(exc, WebhookUnresolvable), str(exc))
    target, host, extensions = pinned(url, address) if address else (url, {}, {})
    timestamp = str(int(time.time()))
    headers = {
        **host,
        "Content-Type": "application/json",
        "User-Agent": "finpulse-webhooks/1",
        IDEMPOTENCY_HEADER: alert_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
    try:
        response = await client.post(target, content=body, headers=headers, extensions=extensions, follow_redirects=False)
    except httpx.HTTPError as exc:
        return DeliveryResult(False, True, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return DeliveryResult(True, False, f"HTTP {response.status_code}")
    retry = response.status_code >= 500 or response.status_code in (408, 425, 429)
    return DeliveryResult(False, retry, f"HTTP {response.status_code}: {response.text[:200]}")
