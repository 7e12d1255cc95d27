"""BatchedEngine: the part of every backend that is not its runtime.

It takes the constructor arguments every backend shares, owns the Batcher (tokenising,
token-budget batching, softmax into Scores, see engines.serving.batching), the model version,
predict and health. A backend writes only how it loads (_load, which returns the
model_version) and its forward pass (_logits), so every backend batches, truncates and
orders results identically and the contract tests (tests/unit/test_backend_contract.py) hold
each one to the same expectations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.serving.batching import Batcher
from engines.serving.types import Scores

HEALTH_TEXT = "Shares rose 2% after results."
# Most padded tokens per real token in a CPU forward pass. On 2 cores (AVX2, ONNX Runtime int8), cutting a
# small batch into groups of like length instead of padding it scored 4-32 mixed tweets 1.1-1.45x faster on
# one thread and up to 1.1x on two (docs/performance.md, fourth round).
CPU_MAX_PADDING = 1.25


class BatchedEngine(ABC):
    """An Engine (engines.serving.types) over one checkpoint directory.

    max_length: tokens kept per text. token_budget: most padded tokens (rows x width) per
    forward pass. threads: CPU threads for the runtime (None = its default; backends that run
    on a GPU ignore it). max_rows: most rows per forward pass, reported as max_batch_size
    (None = bounded by token_budget only). max_chunks: most windows of max_length tokens a long
    text is scored over (engines.serving.batching; 1 = its first max_length tokens only).
    """

    backend: str  # set by each backend class; ONNX Runtime says whether it serves int8
    # Padding bound of the batches (engines.serving.batching.budget_batches); None on a GPU, where a padded
    # row costs little next to another launch (not measured here: no GPU).
    max_padding: float | None = CPU_MAX_PADDING

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
        max_rows: int | None = None,
        max_chunks: int = 1,
    ) -> None:
        # Checked before anything heavy loads (the Batcher checks them again).
        if not 0 < max_length <= token_budget:
            raise ValueError(f"need 0 < max_length <= token_budget, got {max_length=} {token_budget=}")
        self.max_length = max_length
        self.token_budget = token_budget
        self.threads = threads
        self.max_batch_size = max_rows
        self.max_chunks = max_chunks
        self.model_version = self._load(model_dir)
        self.batcher = self._batcher(model_dir)

    @abstractmethod
    def _load(self, model_dir: str | Path) -> str:
        """Load the weights (session, plan) for model_dir; return the model_version they serve."""

    @abstractmethod
    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 [rows, width] -> (sentiment_logits, topic_logits) as numpy."""

    def _batcher(self, model_dir: str | Path) -> Batcher:
        """The checkpoint's tokenizer and label sets from its config.json; called after _load."""
        return Batcher.for_checkpoint(
            Path(model_dir), max_length=self.max_length, token_budget=self.token_budget, max_rows=self.max_batch_size,
            max_chunks=self.max_chunks, max_padding=self.max_padding,
        )

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order, [] for []."""
        return self.batcher.predict(texts, self._logits)

    def health(self) -> None:
        """One forward pass on a short text; raises unless both heads give finite probabilities."""
        [scores] = self.predict([HEALTH_TEXT])
        for head in (scores.sentiment, scores.topic):
            if not all(math.isfinite(p) for p in head.probs.values()):
                raise RuntimeError(f"{self.backend} engine ({self.model_version}) gives non-finite probabilities")
