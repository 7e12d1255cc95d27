"""What keeps the API's data to those it belongs to: webhook secrets encrypted at rest, the bearer-token guard.

Pure helpers over bytes and ASGI messages: no SQL and no settings, so the store, the
outbox and the API all use them without importing each other.
"""
