"""Alert subscriptions (what the API and CLI accept) and alerts (what `<namespace>.alerts` and webhooks carry).

A subscription watches one aggregation key — `key_type` (global, entity, topic, lang,
source) and `key`, or `*` for every key of that type — in windows of `window_s`
seconds, with one rule:

- threshold: a window's metric compared with a value, once the window holds `min_count` documents;
- spike: a window's volume or negative count against the same key's trailing windows (z-score or ratio);
- instant: one document under the key whose P(negative) reaches `min_confidence`.

An alert is unique per (subscription, key, window): its `alert_id` is derived from those,
so restarts, redeliveries and replays can never produce a second one.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

KeyType = Literal["global", "entity", "topic", "lang", "source"]
ANY_KEY = "*"


class ThresholdRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["threshold"]
    metric: Literal["negative_ratio", "mean_score", "volume", "negative_count"] = Field(
        description="negative_ratio = negative / volume; mean_score = mean of P(positive) - P(negative)"
    )
    op: Literal[">=", "<="] = ">="
    value: float = Field(allow_inf_nan=False)
    min_count: int = Field(1, ge=1, le=1_000_000_000, description="Documents the window must hold before the rule is judged")


class SpikeRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["spike"]
    metric: Literal["volume", "negative_count"] = "negative_count"
    method: Literal["zscore", "ratio"] = Field(
        "zscore", description="zscore: (x - mean) / max(std, 1); ratio: x / max(mean, 1), over the baseline windows"
    )
    threshold: float = Field(3.0, gt=0, allow_inf_nan=False)
    baseline_windows: int = Field(12, ge=2, le=1000, description="Trailing windows of the same key; missing ones count 0")
    min_count: int = Field(5, ge=1, le=1_000_000_000, description="Smallest metric value that may fire, whatever the baseline")


class InstantRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["instant"]
    min_confidence: float = Field(0.8, ge=0.0, le=1.0, description="P(negative) a single document must reach")


Rule = Annotated[ThresholdRule | SpikeRule | InstantRule, Field(discriminator="type")]

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class SubscriptionSpec(BaseModel):
    """What a user sends to create or replace a subscription."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    key_type: KeyType
    key: Key = Field(ANY_KEY, description=f"The key to watch, e.g. TSLA for an entity; {ANY_KEY!r} for all of the type")
    rule: Rule
    window_s: int = Field(60, gt=0, le=31 * 86_400, description="Window size, seconds: one of the worker's FINPULSE_WINDOWS")
    cooldown_s: int = Field(
        0, ge=0, le=366 * 86_400, description="No second alert for the same key whose window starts within this many seconds of the last"
    )
    webhook_url: AnyHttpUrl | None = Field(None, description="POST each alert here (HMAC-SHA256 signed)")
    webhook_secret: Annotated[str, StringConstraints(min_length=16, max_length=256)] | None = Field(
        None, description="HMAC key; generated when a webhook is given without one"
    )
    enabled: bool = True


class Subscription(SubscriptionSpec):
    """A stored subscription, as shown. `webhook_secret` is only ever shown when it is created."""

    webhook_url: str | None = Field(  # type: ignore[assignment]
        None, description="Redacted: scheme, host, port and a short first path segment; `…` marks what is not shown"
    )
    id: str
    created_at: datetime
    updated_at: datetime


def alert_id(subscription_id: str, key_type: str, key: str, window_s: int, window_start: datetime) -> str:
    """The alert's identity and the webhook's idempotency key: one per subscription, key and window."""
    raw = "\x1f".join([subscription_id, key_type, key, str(window_s), str(int(window_start.timestamp()))])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Alert(BaseModel):
    """One fired alert, as stored, emitted on `<namespace>.alerts` and POSTed to webhooks."""

    model_config = ConfigDict(frozen=True)

    alert_id: str
    subscription_id: str
    subscription_name: str
    rule: Literal["threshold", "spike", "instant"]
    metric: str = Field(description="What was measured: negative_ratio, mean_score, volume, negative_count, p_negative")
    observed: float = Field(description="The metric's value in the window (or the document's P(negative))")
    value: float = Field(description="What the rule compared with its threshold (the z-score or ratio for spikes)")
    threshold: float
    key_type: str
    key: str
    window_s: int
    window_start: datetime
    window_end: datetime
    model_version: str
    volume: int = Field(description="Documents in the window when the alert fired")
    doc_id: str | None = Field(None, description="The document that fired an instant alert")
    baseline_mean: float | None = None
    baseline_std: float | None = None
    fired_at: datetime
