"""What every backend shares: tokenising, length-sorted token-budget batching, softmax into Scores.

Backends differ only in how a padded (input_ids, attention_mask) batch becomes logits. Keeping
the rest in one place makes their outputs comparable row for row (same truncation, same
padding, same batches) and gives them identical edge-case behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from engines.serving.checkpoint import input_prefix, load_tokenizer
from engines.serving.types import SENTIMENT_LABELS, HeadPrediction, Scores

# Texts are cut to max_length * this many characters before tokenising: only the first
# max_length tokens are kept anyway, and tokenising a 1 MB post in full would stall the worker.
_CHARS_PER_TOKEN_CAP = 64

# (input_ids, attention_mask), both int64 [rows, width] -> (sentiment_logits, topic_logits)
RunBatch = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class Batcher:
    """Turns texts into padded batches for a backend and its logits back into Scores in input order.

    Texts are sorted by token length before batching so that short posts are not padded to
    the length of a long one; the budget bounds peak activation memory regardless of how
    many texts a caller hands over at once. max_rows caps rows per batch for backends with a
    fixed largest batch (a TensorRT optimisation profile).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        token_budget: int,
        sentiment_labels: Sequence[str],
        topic_labels: Sequence[str],
        max_rows: int | None = None,
        prefix: str = "",
    ) -> None:
        if not 0 < max_length <= token_budget:
            raise ValueError(f"need 0 < max_length <= token_budget, got {max_length=} {token_budget=}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if set(sentiment_labels) != set(SENTIMENT_LABELS):
            raise ValueError(f"sentiment labels {list(sentiment_labels)} != {list(SENTIMENT_LABELS)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.sentiment_labels = list(sentiment_labels)
        self.topic_labels = list(topic_labels)
        self.prefix = prefix

    @classmethod
    def for_checkpoint(
        cls, model_dir: Path, *, max_length: int, token_budget: int, max_rows: int | None = None
    ) -> Batcher:
        """A Batcher with model_dir's tokenizer and the label sets from its config.json, for
        backends that never load the torch model (whose config would carry them)."""
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        try:
            return cls(
                load_tokenizer(model_dir),
                max_length=max_length,
                token_budget=token_budget,
                sentiment_labels=config["sentiment_labels"],
                topic_labels=config["topic_labels"],
                max_rows=max_rows,
                prefix=input_prefix(config),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{model_dir}: {e}") from None

    def predict(self, texts: Sequence[str], run: RunBatch) -> list[Scores]:
        """Score texts with run(); results are in input order, [] for []."""
        if not texts:
            return []
        encoded = self.encode(texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Scores | None] = [None] * len(encoded)
        for batch in self.batches(order, encoded):
            sentiment_logits, topic_logits = run(*self.pad([encoded[i] for i in batch]))
            for i, s_probs, t_probs in zip(batch, _softmax(sentiment_logits), _softmax(topic_logits)):
                results[i] = Scores(_head(self.sentiment_labels, s_probs), _head(self.topic_labels, t_probs))
        return results  # type: ignore[return-value]  # every slot was filled

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] prefix+text [SEP], cut to max_length."""
        return encode_texts(self.tokenizer, texts, max_length=self.max_length, prefix=self.prefix)

    def batches(self, order: list[int], encoded: list[list[int]]) -> Iterator[list[int]]:
        """Cut length-sorted indices so that (longest in batch) x (batch size) <= token_budget."""
        return budget_batches(order, encoded, self.token_budget, self.max_rows)

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad rows to the longest: (input_ids, attention_mask), int64 as BERT exports expect."""
        return pad_rows(rows, self.tokenizer.pad_token_id)


def budget_batches(
    order: list[int], encoded: list[list[int]], token_budget: int, max_rows: int | None = None
) -> Iterator[list[int]]:
    """Cut indices sorted by ascending length so that (longest in batch) x (batch size) <= token_budget."""
    batch: list[int] = []
    for i in order:
        # Lengths are ascending, so the newcomer sets the padded width of the batch.
        full = max_rows is not None and len(batch) == max_rows
        if batch and (full or len(encoded[i]) * (len(batch) + 1) > token_budget):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def pad_rows(rows: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows to the longest: (input_ids, attention_mask), int64 as BERT exports expect."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = row
        attention_mask[r, : len(row)] = 1
    return input_ids, attention_mask


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int, prefix: str = ""
) -> list[list[int]]:
    """What the engine and the trainer both feed the model: prefix + text, cut to max_length tokens.

    Texts are cut to max_length * 64 characters first (tokenising a 1 MB post in full would stall
    the worker) and lone surrogates, legal in a Python str, are replaced: the Rust tokenizer rejects them.
    """
    char_cap = max_length * _CHARS_PER_TOKEN_CAP
    return tokenizer(
        [_valid_utf8(prefix + text[:char_cap]) for text in texts],
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]


def _softmax(logits: np.ndarray) -> list[list[float]]:
    # float64 so that each row sums to 1 well within the 1e-5 that consumers check.
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).tolist()


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
