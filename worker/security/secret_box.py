"""Webhook secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under the keys in `FINPULSE_SECRET_KEYS`.

A stored value says how it is kept: `fernet:<token>` (encrypted) or `plain:<secret>`
(written by migration 0004 for a secret stored before encryption, when no key was set).
The first key encrypts and every key decrypts (MultiFernet), so a key is rotated by
putting a new one first and running `finpulse secrets rotate`, which re-encrypts every
stored secret, plain ones included, under it; the old key can then be dropped.

Like Grafana's `secret_key` and GitHub's encrypted webhook secrets, the key lives in the
configuration, never in the database: a copy of the database alone does not reveal the
secrets. Keys are checked here, not in the settings, so a refusal never prints one.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENCRYPTED = "fernet:"
PLAIN = "plain:"
GENERATE = "`finpulse secrets generate-key`"


class SecretKeyMissing(RuntimeError):
    """A secret must be encrypted but no key is configured: a server setting, not the caller's mistake."""


class SecretUnreadable(ValueError):
    """A stored secret no configured key opens (wrong or missing key), or not in a known form."""


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode()))
            except ValueError:
                raise ValueError(
                    f"FINPULSE_SECRET_KEYS: key {number} of {len(keys)} is not a Fernet key"
                    f" (32 url-safe base64-encoded bytes); make one with {GENERATE}"
                ) from None
        self._fernet = MultiFernet(fernets) if fernets else None

    @property
    def can_encrypt(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        """The stored form of `secret`, encrypted under the first key."""
        if self._fernet is None:
            raise SecretKeyMissing(
                "webhook secrets are stored encrypted and no key is configured:"
                f" set FINPULSE_SECRET_KEYS (make a key with {GENERATE})"
            )
        return ENCRYPTED + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret in a stored value."""
        if stored.startswith(PLAIN):
            return stored.removeprefix(PLAIN)
        if not stored.startswith(ENCRYPTED):
            raise SecretUnreadable("stored webhook secret has an unknown form")
        if self._fernet is None:
            raise SecretUnreadable("webhook secret is encrypted and FINPULSE_SECRET_KEYS is unset")
        try:
            return self._fernet.decrypt(stored.removeprefix(ENCRYPTED).encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("no key in FINPULSE_SECRET_KEYS decrypts this webhook secret") from None

    def reseal(self, stored: str) -> str:
        """`stored` encrypted under the first key (a plain one is encrypted); raises SecretUnreadable."""
        if stored.startswith(ENCRYPTED) and self._fernet is not None:
            try:
                return ENCRYPTED + self._fernet.rotate(stored.removeprefix(ENCRYPTED).encode()).decode()
            except InvalidToken:
                raise SecretUnreadable("no key in FINPULSE_SECRET_KEYS decrypts this webhook secret") from None
        return self.seal(self.open(stored))
