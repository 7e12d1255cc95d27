"""PyTorch inference engine for BertForSentimentAndTopic checkpoints (a directory or a hub id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers.utils import cached_file

from engines.modeling import BertForSentimentAndTopic
from engines.serving.base import BatchedEngine
from engines.serving.batching import Batcher
from engines.serving.checkpoint import WEIGHTS_NAME, input_prefix, load_tokenizer, sha256_file, weights_version


class TorchEngine(BatchedEngine):
    """Scores texts with both heads in one encoder pass (BatchedEngine batches).

    threads sets torch's process-wide intra-op thread count: torch has no per-model pool.
    """

    backend = "torch"

    def _load(self, model_dir: str | Path) -> str:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model = BertForSentimentAndTopic.from_pretrained(model_dir).eval()
        name = getattr(self.model.config, "finpulse_model_name", None) or Path(str(model_dir)).name
        self.weights_sha256 = sha256_file(cached_file(model_dir, WEIGHTS_NAME))
        return weights_version(name, self.weights_sha256)

    def _batcher(self, model_dir: str | Path) -> Batcher:
        # The label sets come from the loaded model's config, so a hub id works as well as a directory.
        config = self.model.config
        try:
            return Batcher(
                load_tokenizer(model_dir),
                max_length=self.max_length,
                token_budget=self.token_budget,
                sentiment_labels=config.sentiment_labels,
                topic_labels=config.topic_labels,
                max_rows=self.max_batch_size,
                prefix=input_prefix(config),
                max_chunks=self.max_chunks,
                max_padding=self.max_padding,
            )
        except ValueError as e:
            raise ValueError(f"{model_dir}: {e}") from None

    @torch.inference_mode()
    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        device = self.model.device
        out = self.model(
            input_ids=torch.from_numpy(input_ids).to(device), attention_mask=torch.from_numpy(attention_mask).to(device)
        )
        return out.sentiment_logits.float().cpu().numpy(), out.topic_logits.float().cpu().numpy()
