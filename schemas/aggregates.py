"""Windowed aggregates as they are emitted on `<namespace>.aggregates`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class WindowAggregate(BaseModel):
    """Sentiment of one key in one tumbling window as the latest change left it, so a later message supersedes."""

    model_config = ConfigDict(frozen=True)

    window_s: int = Field(description="Window size, seconds")
    window_start: datetime
    key_type: str = Field(description="global, source, lang, topic or entity")
    key: str
    model_version: str
    count_negative: int
    count_neutral: int
    count_positive: int
    volume: int
    score_sum: float
    mean_score: float = Field(description="Mean of P(positive) - P(negative)")

    @property
    def message_key(self) -> bytes:
        """Kafka key on `<namespace>.aggregates`: one key's updates stay in order on one partition."""
        return f"{self.key_type}:{self.key}".encode()
