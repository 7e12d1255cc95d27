"""Backend-neutral types shared by every inference engine.

The worker only ever sees these types, so swapping torch for onnxruntime or TensorRT
later changes nothing downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class HeadPrediction:
    """One classification head's verdict: the argmax label and the full distribution."""

    label: str
    probs: dict[str, float]  # label -> probability, sums to 1


@dataclass(frozen=True)
class Scores:
    """Both heads' predictions for one text."""

    sentiment: HeadPrediction
    topic: HeadPrediction

    @property
    def sentiment_score(self) -> float:
        """A single signed number in [-1, 1] that aggregates well: P(positive) - P(negative)."""
        probs = self.sentiment.probs
        return probs["positive"] - probs["negative"]


class Engine(Protocol):
    """What the worker needs from a scoring backend."""

    backend: str  # "torch" now; "onnxruntime" / "tensorrt" later
    model_version: str  # stable id of the weights: "<name>-<first 12 hex of sha256(model.safetensors)>"
    max_length: int

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order and [] for []."""
        ...
