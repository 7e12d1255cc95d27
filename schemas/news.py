"""Messages on the Kafka topics: `NewsItem` in, `ScoredItem` out, `DeadLetter` for rejects."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class NewsItem(BaseModel):
    """A post or news item as producers send it on `<namespace>.docs`.

    Types are strict (a number is not a text) and unknown fields are ignored, so
    producers can add fields without breaking older workers.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: ShortText | None = None
    source: ShortText = "unknown"
    text: str
    lang: Annotated[str, StringConstraints(min_length=2, max_length=16)] | None = None
    published_at: Annotated[datetime, Field(strict=False)] | None = None
    url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    author: ShortText | None = None
    tickers: list[ShortText] = Field(default_factory=list, max_length=64)
    schema_version: int = SCHEMA_VERSION


class Prediction(BaseModel):
    """One head's answer: the winning label and every label's probability."""

    model_config = ConfigDict(frozen=True)

    label: str
    probs: dict[str, float]


class ScoredItem(BaseModel):
    """A validated, normalised item with the model's scores, on `<namespace>.scored`."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    text: str
    text_hash: str
    lang: str | None = None
    published_at: datetime | None = None
    url: str | None = None
    author: str | None = None
    tickers: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=list, description="Tickers: the producer's, cashtags, watchlist names")
    sentiment: Prediction
    topic: Prediction
    sentiment_score: float = Field(description="P(positive) - P(negative), in [-1, 1]")
    event_time: datetime = Field(
        description="When it happened: published_at, else when it reached Kafka; windows are cut on this"
    )
    model_version: str
    received_at: datetime | None = Field(
        None, description="When it reached Kafka (the docs message's timestamp): the start of the end-to-end latency"
    )
    scored_at: datetime
    latency_ms: float = Field(description="From the item reaching the scorer to its score, in ms")
    cached: bool = Field(description="True when the score came from the Redis cache")
    schema_version: int = SCHEMA_VERSION


class DeadLetter(BaseModel):
    """What the worker could not accept, with enough to find and replay the original."""

    reason: str = Field(description="Machine-readable code, e.g. invalid_json, empty_text")
    detail: str = Field(description="Human-readable explanation")
    stage: str = Field(description="The stage that rejected it: ingest, persist")
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key_b64: str | None = None
    value_b64: str = Field(description="The original message bytes, base64; only their start when `value_truncated`")
    value_size: int | None = Field(None, description="Size of the original value, bytes")
    value_sha256: str | None = Field(None, description="SHA-256 (hex) of the whole original value")
    value_truncated: bool = Field(False, description="True when the value was cut to keep the letter under Kafka's limit")
    rejected_at: datetime
