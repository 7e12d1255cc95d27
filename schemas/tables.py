"""SQL tables (SQLAlchemy 2, typed). Alembic migrations in `schemas/migrations` create them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Document(Base):
    """One scored document per model version: re-scoring with a new model adds rows beside the old."""

    __tablename__ = "documents"

    doc_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(256), index=True)
    lang: Mapped[str | None] = mapped_column(String(16), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    url: Mapped[str | None] = mapped_column(String(2048))
    author: Mapped[str | None] = mapped_column(String(256))
    tickers: Mapped[list[str]] = mapped_column(JSON, default=list)
    entities: Mapped[list[str]] = mapped_column(JSON, default=list)
    sentiment_label: Mapped[str] = mapped_column(String(16), index=True)
    sentiment_score: Mapped[float] = mapped_column(Float)
    sentiment_probs: Mapped[dict[str, float]] = mapped_column(JSON)
    topic_label: Mapped[str] = mapped_column(String(128), index=True)
    topic_probs: Mapped[dict[str, float]] = mapped_column(JSON)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DocumentKey(Base):
    """One row per (document, aggregation key): the facts aggregates are recomputed from."""

    __tablename__ = "document_keys"
    __table_args__ = (Index("ix_document_keys_lookup", "key_type", "key", "model_version", "event_ts"),)

    doc_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    event_ts: Mapped[int] = mapped_column(BigInteger, doc="Event time, epoch seconds (portable window arithmetic)")
    sentiment_label: Mapped[str] = mapped_column(String(16))
    sentiment_score: Mapped[float] = mapped_column(Float)


class Aggregate(Base):
    """Sentiment of one key in one tumbling window, for one model version."""

    __tablename__ = "aggregates"

    window_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    key_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    count_negative: Mapped[int] = mapped_column(Integer)
    count_neutral: Mapped[int] = mapped_column(Integer)
    count_positive: Mapped[int] = mapped_column(Integer)
    volume: Mapped[int] = mapped_column(Integer)
    score_sum: Mapped[float] = mapped_column(Float)
    mean_score: Mapped[float] = mapped_column(Float, doc="Mean of P(positive) - P(negative)")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SubscriptionRow(Base):
    """An alert subscription; workers reload these every few seconds, so changes need no restart."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_type: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(256))
    window_s: Mapped[int] = mapped_column(Integer)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    cooldown_s: Mapped[int] = mapped_column(Integer, default=0)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(1024), doc="`fernet:<token>`, or `plain:<secret>` from before 0004")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertRow(Base):
    """A fired alert, and the outbox state of its two deliveries (the alerts topic and the webhook).

    The primary key is derived from (subscription, key, window), so an alert exists once
    whatever is redelivered or replayed; the unique constraint says so in the schema too.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("subscription_id", "key_type", "key", "window_s", "window_start", name="uq_alerts_once"),
        Index("ix_alerts_cooldown", "subscription_id", "key_type", "key", "window_start"),
        Index("ix_alerts_outbox", "published", "delivery", "next_attempt_at"),
    )

    alert_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36))
    subscription_name: Mapped[str] = mapped_column(String(128))
    rule: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(32))
    observed: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    key_type: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(256))
    window_s: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model_version: Mapped[str] = mapped_column(String(128))
    volume: Mapped[int] = mapped_column(Integer)
    doc_id: Mapped[str | None] = mapped_column(String(256))
    baseline_mean: Mapped[float | None] = mapped_column(Float)
    baseline_std: Mapped[float | None] = mapped_column(Float)
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False, doc="Sent to <namespace>.alerts")
    delivery: Mapped[str] = mapped_column(
        String(16), default="none", doc="Webhook: none, pending, delivered, failed, suppressed (replays)"
    )
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class ApiTokenRow(Base):
    """An API bearer token, by its SHA-256 (the token itself is shown once and never stored)."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        Index("uq_api_tokens_active_name", "name", unique=True,
              postgresql_where=text("revoked_at IS NULL"), sqlite_where=text("revoked_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), doc="The token's first characters, to recognise it in a list")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, doc="Hex SHA-256 of the token")
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelVersionRow(Base):
    """A model version the store knows: where its checkpoint lies and its role (`finpulse promote`, replay --shadow).

    `live` is the one the workers score with and the API shows; at most one row holds it (a partial unique
    index), and `finpulse promote` moves it in one transaction, which running workers poll. `shadow` rows were
    written beside the live ones by `finpulse replay --shadow`, with no alerts; `retired` ones were live before.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        Index("uq_model_versions_live", "role", unique=True,
              postgresql_where=text("role = 'live'"), sqlite_where=text("role = 'live'")),
    )

    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_dir: Mapped[str] = mapped_column(String(2048), doc="Checkpoint directory every worker can read")
    role: Mapped[str] = mapped_column(String(16), doc="live, shadow or retired")
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
