"""PyTorch inference engine for BertForSentimentAndTopic checkpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import cached_file

from engines.base import SENTIMENT_LABELS, HeadPrediction, Scores
from engines.modeling import BertForSentimentAndTopic

WEIGHTS_NAME = "model.safetensors"
_HASH_CHUNK = 1 << 20
# Texts are cut to max_length * this many characters before tokenising: only the first
# max_length tokens are kept anyway, and tokenising a 1 MB post in full would stall the worker.
_CHARS_PER_TOKEN_CAP = 64


class TorchEngine:
    """Scores texts with both heads in one encoder pass, batching by a padded-token budget.

    Texts are sorted by token length before batching so that short posts are not padded to
    the length of a long one; the budget bounds peak activation memory regardless of how
    many texts a caller hands over at once.
    """

    backend = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
    ) -> None:
        if not 0 < max_length <= token_budget:
            raise ValueError(f"need 0 < max_length <= token_budget, got {max_length=} {token_budget=}")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        self.max_length = max_length
        self.token_budget = token_budget
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_dir}: a fast (tokenizers-backed) tokenizer is required")
        self.model = BertForSentimentAndTopic.from_pretrained(model_dir).eval()
        config = self.model.config
        if set(config.sentiment_labels) != set(SENTIMENT_LABELS):
            raise ValueError(f"{model_dir}: sentiment labels {config.sentiment_labels} != {list(SENTIMENT_LABELS)}")
        self.sentiment_labels: list[str] = list(config.sentiment_labels)
        self.topic_labels: list[str] = list(config.topic_labels)
        name = getattr(config, "finpulse_model_name", None) or Path(str(model_dir)).name
        self.model_version = f"{name}-{_sha256_prefix(cached_file(model_dir, WEIGHTS_NAME))}"

    @torch.inference_mode()
    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order, [] for []."""
        if not texts:
            return []
        char_cap = self.max_length * _CHARS_PER_TOKEN_CAP
        encoded = self.tokenizer(
            [_valid_utf8(text[:char_cap]) for text in texts],
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Scores | None] = [None] * len(encoded)
        for batch in self._batches(order, encoded):
            input_ids, attention_mask = self._pad([encoded[i] for i in batch])
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            sentiment = out.sentiment_logits.softmax(-1).tolist()
            topic = out.topic_logits.softmax(-1).tolist()
            for i, s_probs, t_probs in zip(batch, sentiment, topic):
                results[i] = Scores(_head(self.sentiment_labels, s_probs), _head(self.topic_labels, t_probs))
        return results  # type: ignore[return-value]  # every slot was filled

    def _batches(self, order: list[int], encoded: list[list[int]]) -> Iterator[list[int]]:
        """Cut length-sorted indices so that (longest in batch) x (batch size) <= token_budget."""
        batch: list[int] = []
        for i in order:
            # Lengths are ascending, so the newcomer sets the padded width of the batch.
            if batch and len(encoded[i]) * (len(batch) + 1) > self.token_budget:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[r, : len(row)] = 1
        device = self.model.device
        return input_ids.to(device), attention_mask.to(device)


def _head(labels: list[str], probs: list[float]) -> HeadPrediction:
    best = max(range(len(probs)), key=probs.__getitem__)
    return HeadPrediction(label=labels[best], probs=dict(zip(labels, probs)))


def _valid_utf8(text: str) -> str:
    """Replace lone surrogates (legal in a Python str, e.g. from json.loads) that the Rust tokenizer rejects."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _sha256_prefix(path: str | Path, n: int = 12) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:n]
