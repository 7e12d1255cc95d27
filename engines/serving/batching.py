"""What every backend shares: tokenising, chunking, length-sorted token-budget batching, softmax into Scores.

Backends differ only in how a padded (input_ids, attention_mask) batch becomes logits. Keeping
the rest in one place makes their outputs comparable row for row (same truncation, same
padding, same batches) and gives them identical edge-case behaviour.

Long texts (news articles) are scored over chunks: a text longer than one window of max_length
tokens is cut into consecutive windows, each with the special tokens and the model's input
prefix; at most max_chunks of them are scored, the first and then evenly spaced ones to the
end, so the whole article is sampled at a bounded cost. The text's probabilities are the
mean of its windows' probabilities weighted by their text tokens (a short last window counts
less). A text that fits one window is encoded exactly as with max_chunks=1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.serving.checkpoint import input_prefix, load_tokenizer
from engines.serving.tokenizer import ServingTokenizer
from engines.serving.types import SENTIMENT_LABELS, HeadPrediction, Scores

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Texts are cut to max_length * this many characters before tokenising: only the first
# max_length tokens are kept anyway, and tokenising a 1 MB post in full would stall the worker.
_CHARS_PER_TOKEN_CAP = 64
# Chunked texts are tokenised whole up to this many characters (FINPULSE_MAX_TEXT_CHARS' ceiling).
CHUNKED_CHAR_CAP = 200_000

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
        tokenizer: PreTrainedTokenizerBase | ServingTokenizer,
        *,
        max_length: int,
        token_budget: int,
        sentiment_labels: Sequence[str],
        topic_labels: Sequence[str],
        max_rows: int | None = None,
        prefix: str = "",
        max_chunks: int = 1,
        max_padding: float | None = None,
    ) -> None:
        if not 0 < max_length <= token_budget:
            raise ValueError(f"need 0 < max_length <= token_budget, got {max_length=} {token_budget=}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        if max_padding is not None and max_padding < 1:
            raise ValueError(f"max_padding must be >= 1 (padded tokens per real token), got {max_padding}")
        if set(sentiment_labels) != set(SENTIMENT_LABELS):
            raise ValueError(f"sentiment labels {list(sentiment_labels)} != {list(SENTIMENT_LABELS)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.sentiment_labels = list(sentiment_labels)
        self.topic_labels = list(topic_labels)
        self.prefix = prefix
        self.max_chunks = max_chunks
        self.max_padding = max_padding

    @classmethod
    def for_checkpoint(
        cls, model_dir: Path, *, max_length: int, token_budget: int, max_rows: int | None = None, max_chunks: int = 1,
        max_padding: float | None = None,
    ) -> Batcher:
        """A Batcher with model_dir's tokenizer and the label sets from its config.json, for
        backends that never load the torch model (whose config would carry them); the tokenizer
        runs on `tokenizers` alone where the directory allows (engines/serving/tokenizer.py)."""
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        try:
            return cls(
                ServingTokenizer.from_dir(model_dir) or load_tokenizer(model_dir),
                max_length=max_length,
                token_budget=token_budget,
                sentiment_labels=config["sentiment_labels"],
                topic_labels=config["topic_labels"],
                max_rows=max_rows,
                prefix=input_prefix(config),
                max_chunks=max_chunks,
                max_padding=max_padding,
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{model_dir}: {e}") from None

    def predict(self, texts: Sequence[str], run: RunBatch) -> list[Scores]:
        """Score texts with run(); results are in input order, [] for []."""
        if not texts:
            return []
        windows, owners, weights = self.windows(texts)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        sentiment = np.zeros((len(texts), len(self.sentiment_labels)))
        topic = np.zeros((len(texts), len(self.topic_labels)))
        for batch in self.batches(order, windows):
            sentiment_logits, topic_logits = run(*self.pad([windows[i] for i in batch]))
            rows = [owners[i] for i in batch]
            scale = np.array([weights[i] for i in batch])[:, None]
            # np.add.at: a text's windows may share a batch, and each must add its share.
            np.add.at(sentiment, rows, scale * _softmax(sentiment_logits))
            np.add.at(topic, rows, scale * _softmax(topic_logits))
        return [
            Scores(_head(self.sentiment_labels, s.tolist()), _head(self.topic_labels, t.tolist()))
            for s, t in zip(sentiment, topic)
        ]

    def windows(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int], list[float]]:
        """The rows to score: token ids of each window, the text it belongs to, its weight in that
        text's mean (the weights of one text sum to 1). One window per text when max_chunks is 1."""
        encoded = self.encode(texts)
        if self.max_chunks == 1:
            return encoded, list(range(len(encoded))), [1.0] * len(encoded)
        windows: list[list[int]] = []
        owners: list[int] = []
        weights: list[float] = []
        long_texts = [i for i, ids in enumerate(encoded) if len(ids) == self.max_length]  # cut: maybe longer
        chunked = dict(zip(long_texts, self._chunk([texts[i] for i in long_texts]))) if long_texts else {}
        for i, ids in enumerate(encoded):
            rows = chunked.get(i) or [ids]
            total = sum(len(row) for row in rows)
            windows += rows
            owners += [i] * len(rows)
            weights += [len(row) / total for row in rows]
        return windows, owners, weights

    @cached_property
    def _specials(self) -> list[int]:
        """The special tokens around one sequence ([CLS] … [SEP], <s> … </s>), from an empty text's encoding."""
        return list(self.tokenizer("", return_attention_mask=False, return_token_type_ids=False)["input_ids"])

    def _chunk(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each text's windows (see the module's docstring); the first is what `encode` gives."""
        full = self.tokenizer(
            [_valid_utf8(self.prefix + text[:CHUNKED_CHAR_CAP]) for text in texts],
            add_special_tokens=False,
            return_offsets_mapping=bool(self.prefix),
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the maximum sequence length" warning: that is the point
        )
        opening, *closing = self._specials
        room = self.max_length - 1 - len(closing)
        chunks = []
        for n, ids in enumerate(full["input_ids"]):
            # The prefix's tokens are those that end inside it; they lead every window.
            offsets = full["offset_mapping"][n] if self.prefix else ()
            cut = sum(1 for _ in takewhile(lambda offset: offset[1] <= len(self.prefix), offsets))
            head, body = ids[:cut], ids[cut:]
            step = max(1, room - len(head))
            starts = range(0, len(body), step)
            if len(starts) > self.max_chunks:
                picks = np.linspace(0, len(starts) - 1, self.max_chunks).round().astype(int)
                starts = [starts[p] for p in dict.fromkeys(picks.tolist())]
            chunks.append(
                [[opening, *head, *body[start : start + step], *closing] for start in starts]
            )
        return chunks

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] prefix+text [SEP], cut to max_length."""
        return encode_texts(self.tokenizer, texts, max_length=self.max_length, prefix=self.prefix)

    def batches(self, order: list[int], encoded: list[list[int]]) -> Iterator[list[int]]:
        """Cut length-sorted indices so that (longest in batch) x (batch size) <= token_budget (and the padding
        stays within max_padding)."""
        return budget_batches(order, encoded, self.token_budget, self.max_rows, self.max_padding)

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad rows to the longest: (input_ids, attention_mask), int64 as BERT exports expect."""
        return pad_rows(rows, self.tokenizer.pad_token_id)


def budget_batches(
    order: list[int], encoded: list[list[int]], token_budget: int, max_rows: int | None = None,
    max_padding: float | None = None,
) -> Iterator[list[int]]:
    """Cut indices sorted by ascending length so that (longest in batch) x (batch size) <= token_budget and,
    with max_padding, the padded tokens are at most max_padding x the real ones. A long sorted run of texts
    has neighbours of nearly the same length and is rarely cut by that; a handful of texts of every length
    (what a lightly loaded worker gets) is cut into groups of like length instead of padded to the longest."""
    batch: list[int] = []
    real = 0  # tokens of the batch's texts, without padding
    for i in order:
        # Lengths are ascending, so the newcomer sets the padded width of the batch.
        width, full = len(encoded[i]), max_rows is not None and len(batch) == max_rows
        padded = width * (len(batch) + 1)
        if batch and (full or padded > token_budget or (max_padding is not None and padded > max_padding * (real + width))):
            yield batch
            batch, real = [], 0
        batch.append(i)
        real += width
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
    tokenizer: PreTrainedTokenizerBase | ServingTokenizer, texts: Sequence[str], *, max_length: int, prefix: str = ""
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    # float64 so that each row sums to 1 well within the 1e-5 that consumers check.
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


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
