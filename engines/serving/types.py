"""Backend-neutral types shared by every inference engine, and the Engine protocol they serve.

The worker only ever sees these types, so swapping torch for onnxruntime or TensorRT
changes nothing downstream. The protocol follows text-embeddings-inference's Backend trait:
a health check, the largest batch one forward pass takes, and predict.
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

    backend: str  # "torch", "onnxruntime", "onnxruntime-int8" or "tensorrt"
    # Stable id of the scores: "<name>-<first 12 hex of sha256(model.safetensors)>", plus a suffix
    # ("-int8", "-int8-static", "-fp16") for a variant whose scores move beyond float noise.
    model_version: str
    max_length: int  # tokens kept per text; longer texts are truncated
    # Most rows in one forward pass (predict splits larger calls itself); None = no fixed cap,
    # only the padded-token budget.
    max_batch_size: int | None

    def health(self) -> None:
        """Raise if the backend cannot score (e.g. a forward pass on one short text fails); else None."""
        ...

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order and [] for []."""
        ...
