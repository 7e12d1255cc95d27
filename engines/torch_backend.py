"""PyTorch inference engine for BertForSentimentAndTopic checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers.utils import cached_file

from engines.base import Scores
from engines.batching import WEIGHTS_NAME, Batcher, load_tokenizer, sha256_file, weights_version
from engines.modeling import BertForSentimentAndTopic


class TorchEngine:
    """Scores texts with both heads in one encoder pass, batching by a padded-token budget (engines.batching)."""

    backend = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        self.max_length = max_length
        self.token_budget = token_budget
        self.tokenizer = load_tokenizer(model_dir)
        self.model = BertForSentimentAndTopic.from_pretrained(model_dir).eval()
        config = self.model.config
        try:
            self.batcher = Batcher(
                self.tokenizer,
                max_length=max_length,
                token_budget=token_budget,
                sentiment_labels=config.sentiment_labels,
                topic_labels=config.topic_labels,
            )
        except ValueError as e:
            raise ValueError(f"{model_dir}: {e}") from None
        name = getattr(config, "finpulse_model_name", None) or Path(str(model_dir)).name
        self.weights_sha256 = sha256_file(cached_file(model_dir, WEIGHTS_NAME))
        self.model_version = weights_version(name, self.weights_sha256)

    @torch.inference_mode()
    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order, [] for []."""
        return self.batcher.predict(texts, self._logits)

    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        device = self.model.device
        out = self.model(
            input_ids=torch.from_numpy(input_ids).to(device), attention_mask=torch.from_numpy(attention_mask).to(device)
        )
        return out.sentiment_logits.float().cpu().numpy(), out.topic_logits.float().cpu().numpy()
