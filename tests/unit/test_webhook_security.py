"""Webhook safety without services: the SSRF check (IPv6 forms that carry IPv4, scheme, ports), redacted
URLs, and webhook secrets encrypted at rest, with key rotation, on SQLite."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.alerts import InstantRule, SubscriptionSpec
from worker.delivery.webhooks import WebhookRefused, check_webhook_url, embedded_ipv4, redact
from worker.security.secret_box import SecretBox, SecretKeyMissing, SecretUnreadable, generate_key
from worker.settings import Settings, WebhookSettings
from worker.store.database import make_engine, upgrade
from worker.store.subscriptions import SubscriptionRepository

HTTPS = WebhookSettings()


@pytest.mark.parametrize(
    ("host", "carried"),
    [
        ("[64:ff9b::7f00:1]", "127.0.0.1"),  # NAT64
        ("[64:ff9b::a00:5]", "10.0.0.5"),
        ("[2002:7f00:1::]", "127.0.0.1"),  # 6to4
        ("[2002:a9fe:a9fe::1]", "169.254.169.254"),
        ("[::127.0.0.1]", "127.0.0.1"),  # IPv4-compatible
        ("[::ffff:127.0.0.1]", "127.0.0.1"),  # IPv4-mapped
        ("[::ffff:0:a9fe:a9fe]", "169.254.169.254"),  # IPv4-translated
        ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "127.0.0.1"),  # Teredo: the client address, inverted
    ],
)
def test_ipv6_forms_that_carry_an_internal_ipv4_address_are_refused(host: str, carried: str) -> None:
    with pytest.raises(WebhookRefused, match="private, loopback"):
        check_webhook_url(f"https://{host}/hook", HTTPS)
    assert carried in map(str, embedded_ipv4(ipaddress.IPv6Address(host.strip("[]"))))


def test_ipv6_forms_that_carry_a_public_address_pass() -> None:
    assert check_webhook_url("https://[64:ff9b::808:808]/hook", HTTPS) == "64:ff9b::808:808"
    assert check_webhook_url("https://[2002:808:808::1]/hook", HTTPS) == "2002:808:808::1"
    with pytest.raises(WebhookRefused):  # local-use NAT64 (RFC 8215) is never global
        check_webhook_url("https://[64:ff9b:1::808:808]/hook", HTTPS)


def test_https_on_443_or_80_unless_configured() -> None:
    with pytest.raises(WebhookRefused, match="must be https, not 'http'.*FINPULSE_WEBHOOK_ALLOW_HTTP"):
        check_webhook_url("http://8.8.8.8/hook", HTTPS)
    assert check_webhook_url("http://8.8.8.8/hook", WebhookSettings(allow_http=True)) == "8.8.8.8"
    assert check_webhook_url("https://8.8.8.8:80/hook", HTTPS) == "8.8.8.8"
    for url in ("https://8.8.8.8:8443/hook", "https://8.8.8.8:22/", "https://8.8.8.8:6379/"):
        with pytest.raises(WebhookRefused, match="FINPULSE_WEBHOOK_ALLOWED_PORTS"):
            check_webhook_url(url, HTTPS)
    wider = WebhookSettings(allowed_ports=["443", "8000-8999"])
    assert check_webhook_url("https://8.8.8.8:8443/hook", wider) == "8.8.8.8"
    with pytest.raises(WebhookRefused, match="port"):
        check_webhook_url("https://8.8.8.8:9000/hook", wider)
    with pytest.raises(WebhookRefused, match="invalid port"):
        check_webhook_url("https://8.8.8.8:99999/hook", HTTPS)
    # Scheme and ports hold even where private addresses are allowed.
    with pytest.raises(WebhookRefused):
        check_webhook_url("http://127.0.0.1:6379/", WebhookSettings(allow_private=True))


@pytest.mark.parametrize("ports", ["0", "65536", "9000-8000", "http", "443,", ""])
def test_allowed_ports_are_bounded(ports: str) -> None:
    if ports == "443,":
        assert Settings.from_env({"FINPULSE_WEBHOOK_ALLOWED_PORTS": ports}, env_file=None).webhooks.allowed_ports == ["443"]
        return
    with pytest.raises(ValidationError):
        Settings.from_env({"FINPULSE_WEBHOOK_ALLOWED_PORTS": ports}, env_file=None)


def test_urls_are_shown_redacted() -> None:
    assert redact("https://user:pass@hooks.example.com/finpulse/abc?apikey=k") == "https://hooks.example.com/finpulse/…"
    assert redact("https://hooks.example.com:8443/hook") == "https://hooks.example.com:8443/hook"
    assert redact("https://hooks.example.com/hook?token=t") == "https://hooks.example.com/hook…"
    assert redact("https://hooks.example.com/AbCdEfGhIjKlMnOpQrStUv/x") == "https://hooks.example.com/…"  # long: a token?
    assert redact("http://[2001:db8::1]:8080/a/b/c") == "http://[2001:db8::1]:8080/a/…"


def test_secret_box_seals_opens_and_rotates() -> None:
    old, new = generate_key(), generate_key()
    sealed = SecretBox([old]).seal("whsec-0123456789abcdef")
    assert sealed.startswith("fernet:") and "whsec" not in sealed
    assert SecretBox([old]).open(sealed) == "whsec-0123456789abcdef"
    rotating = SecretBox([new, old])  # the new key first: it encrypts, both decrypt
    assert rotating.open(sealed) == "whsec-0123456789abcdef"
    resealed = rotating.reseal(sealed)
    assert SecretBox([new]).open(resealed) == "whsec-0123456789abcdef"
    with pytest.raises(SecretUnreadable):
        SecretBox([old]).open(resealed)
    assert SecretBox([]).open("plain:legacy") == "legacy"
    assert SecretBox([new]).open(SecretBox([new]).reseal("plain:legacy")) == "legacy"
    with pytest.raises(SecretKeyMissing, match="finpulse secrets generate-key"):
        SecretBox([]).seal("x")
    with pytest.raises(SecretUnreadable, match="FINPULSE_SECRET_KEYS is unset"):
        SecretBox([]).open(sealed)
    with pytest.raises(ValueError, match="key 2 of 2 is not a Fernet key") as refused:
        SecretBox([old, "not-a-key-but-a-secret"])
    assert "not-a-key-but-a-secret" not in str(refused.value)


def _spec(**fields: object) -> SubscriptionSpec:
    return SubscriptionSpec(name="s", key_type="entity", key="TSLA", rule=InstantRule(type="instant"), **fields)


def _stored_secrets(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT webhook_secret FROM subscriptions ORDER BY created_at")]


async def test_secrets_are_stored_encrypted_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    old, new = generate_key(), generate_key()
    try:
        with pytest.raises(SecretKeyMissing):
            await SubscriptionRepository(engine).create(_spec(webhook_url="https://hooks.example.com/a"))
        assert (await SubscriptionRepository(engine).create(_spec())).webhook_secret is None  # no webhook: no key needed
        created = await SubscriptionRepository(engine, SecretBox([old])).create(
            _spec(webhook_url="https://hooks.example.com/a", webhook_secret="my-own-secret-1234")
        )
        assert created.webhook_secret == "my-own-secret-1234"
        [stored] = [s for s in _stored_secrets(path) if s]
        assert stored.startswith("fernet:") and "my-own-secret" not in stored
        done, unreadable = await SubscriptionRepository(engine, SecretBox([new, old])).rotate_secrets()
        assert (done, unreadable) == (1, [])
        [rotated] = [s for s in _stored_secrets(path) if s]
        assert SecretBox([new]).open(rotated) == "my-own-secret-1234"
        done, unreadable = await SubscriptionRepository(engine, SecretBox([generate_key()])).rotate_secrets()
        assert (done, unreadable) == (0, [created.id])  # no key opens it: left as it is
        assert _stored_secrets(path).count(rotated) == 1
    finally:
        await engine.dispose()


def test_migration_0004_encrypts_existing_secrets_when_a_key_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    for name, keys in (("with-key.db", key), ("without-key.db", "")):
        path = tmp_path / name
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(url, "0003")
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO subscriptions VALUES ('s1', 'n', 'entity', 'T', 60, '{}', 0, 'https://x/',"
                         " 'legacy-secret-1234', 1, '2026-01-01', '2026-01-01')")
        monkeypatch.setenv("FINPULSE_SECRET_KEYS", keys)
        upgrade(url)
        [stored] = _stored_secrets(path)
        if keys:
            assert stored.startswith("fernet:") and SecretBox([key]).open(stored) == "legacy-secret-1234"
        else:
            assert stored == "plain:legacy-secret-1234"  # still signs; `finpulse secrets rotate` encrypts it
