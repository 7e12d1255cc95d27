"""Webhook delivery: signed, idempotent POSTs to subscribers, and refusal of internal addresses.

Each POST carries the alert as JSON and three headers:

- `Idempotency-Key`: the alert id — the same on every retry, so a receiver stores it once;
- `X-Finpulse-Timestamp`: Unix seconds when this attempt was signed;
- `X-Finpulse-Signature`: `sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"` under the
  subscription's secret (`verify_signature` shows a receiver how to check it).

A URL must be https (`FINPULSE_WEBHOOK_ALLOW_HTTP=true` allows http too) on port 443
or 80 (`FINPULSE_WEBHOOK_ALLOWED_PORTS` widens this), and a URL whose host resolves to a
private, loopback, link-local, multicast or reserved address is refused (server-side
request forgery: a subscriber must not make the worker call into its own network),
when the subscription is made and again before each POST, unless
`FINPULSE_WEBHOOK_ALLOW_PRIVATE=true`. IPv6 forms that carry an IPv4 address (NAT64
`64:ff9b::/96`, 6to4 `2002::/16`, Teredo, IPv4-mapped, -translated and -compatible) are
refused when the IPv4 address would be. The POST then goes to the address that was
checked, so a second DNS answer (rebinding) cannot turn it inward; redirects are not
followed, for the same reason. A host that does not resolve at delivery is retried.

Stored URLs are shown redacted (`redact`): the scheme, host, port and the path's first
segment if it is short, never credentials, a query or the rest of the path, which may hold tokens.
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

from worker.settings import WebhookSettings

SIGNATURE_HEADER = "X-Finpulse-Signature"
TIMESTAMP_HEADER = "X-Finpulse-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REDACT_SEGMENT_CHARS = 16


class WebhookRefused(ValueError):
    """The URL may not be called: bad scheme, no host, or an internal address."""


class WebhookUnresolvable(WebhookRefused):
    """The host does not resolve: refused for a new subscription, retried at delivery (DNS may come back)."""


# IPv6 ranges whose last 32 bits are an IPv4 address: NAT64, IPv4-compatible, IPv4-translated.
_LAST_32_BITS = tuple(map(ipaddress.IPv6Network, ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96")))
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, local use: never global


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which a gateway may turn it into."""
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if any(address in network for network in _LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return [a for a in found if a is not None]


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The internal address `address` is or carries, or None when it is a public one."""
    if not address.is_global or address.is_multicast or address in _LOCAL_NAT64:
        return address
    if isinstance(address, ipaddress.IPv6Address):
        return next((inner for inner in embedded_ipv4(address) if _internal(inner)), None)
    return None


def _port_allowed(port: int, allowed: list[str]) -> bool:
    for part in allowed:
        low, _, high = part.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def check_webhook_url(url: str, settings: WebhookSettings) -> str | None:
    """Refuse what may not be called; return the checked address to connect to (None if none was looked up)."""
    parts = urlsplit(url)
    schemes = ("https", "http") if settings.allow_http else ("https",)
    if parts.scheme not in schemes:
        allow = "" if settings.allow_http else "; FINPULSE_WEBHOOK_ALLOW_HTTP=true allows http"
        raise WebhookRefused(f"webhook URL must be {' or '.join(schemes)}, not {parts.scheme or 'nothing'!r}{allow}")
    if not parts.hostname:
        raise WebhookRefused("webhook URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused("webhook URL has an invalid port") from None
    if not _port_allowed(port, settings.allowed_ports):
        raise WebhookRefused(
            f"webhook port {port} is not allowed ({','.join(settings.allowed_ports)}; FINPULSE_WEBHOOK_ALLOWED_PORTS)"
        )
    if settings.allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, port)
    except socket.gaierror as exc:
        raise WebhookUnresolvable(f"webhook host {parts.hostname!r} does not resolve: {exc.strerror}") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    for address in addresses:
        internal = _internal(address)
        if internal is not None:
            carried = f" (which carries {internal})" if internal != address else ""
            raise WebhookRefused(
                f"webhook host {parts.hostname!r} resolves to {address}{carried}, a private, loopback, link-local or"
                " reserved address; set FINPULSE_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
    return str(addresses[0])


def redact(url: str) -> str:
    """What may be shown of a stored URL: scheme, host, port and a short first path segment; `…` for the rest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    first, _, rest = parts.path.lstrip("/").partition("/")
    if len(first) > REDACT_SEGMENT_CHARS:  # a long segment may itself be a token
        first, rest = "", first
    more = "…" if rest or parts.query or parts.fragment or parts.username or parts.password else ""
    return f"{parts.scheme}://{netloc}/{first}{'/' if first and rest else ''}{more}"


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
    client: httpx.AsyncClient, url: str, secret: str, alert_id: str, body: bytes, settings: WebhookSettings
) -> DeliveryResult:
    """One attempt; never raises."""
    try:  # the DNS lookup blocks, so it runs off the event loop
        address = await asyncio.to_thread(check_webhook_url, url, settings)
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
