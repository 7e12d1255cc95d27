"""SQL tables (SQLAlchemy 2, typed). Alembic migrations in `schemas/migrations` create them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, MetaData, String, Text, func
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
