"""BERT with two classification heads (sentiment, topic) over one shared encoder.

One encoder pass serves both heads, which halves inference cost compared with two
single-task models. The label sets, the pooling and the input prefix travel in config.json,
so a checkpoint directory is self-describing: no backend needs a side-car file.

Pooling is "cls" (BERT's pooler over [CLS], what mBERT was pre-trained with) or "mean" (the
mask-weighted mean of the last hidden states, what sentence encoders such as e5 were trained
with and which have no pooler weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.utils import ModelOutput

from engines.serving.checkpoint import input_prefix
from engines.serving.types import SENTIMENT_LABELS

IGNORE_INDEX = -100
POOLINGS = ("cls", "mean")


def pooling_of(config: BertConfig) -> str:
    """The checkpoint's pooling; "cls" for configs written before it was recorded (mBERT, MiniLM)."""
    pooling = getattr(config, "finpulse_pooling", None) or "cls"
    if pooling not in POOLINGS:
        raise ValueError(f"finpulse_pooling {pooling!r} is not one of {POOLINGS}")
    return pooling


def head_hidden_of(config: BertConfig) -> int:
    """Hidden width of the heads; 0 (one linear layer) for configs written before it was recorded."""
    return int(getattr(config, "finpulse_head_hidden", None) or 0)


def configure_heads(
    config: BertConfig,
    *,
    topic_labels: Sequence[str],
    name: str,
    sentiment_labels: Sequence[str] = SENTIMENT_LABELS,
    head_hidden: int | None = None,
) -> BertConfig:
    """Attach the finpulse label sets and model name to a BertConfig (e.g. one loaded from mBERT).

    Each list's position is the class id, so the lists are the id -> label maps. head_hidden is
    the width of each head's hidden layer (0: a single linear layer; None: keep the config's).
    """
    config.sentiment_labels = list(sentiment_labels)
    config.topic_labels = list(topic_labels)
    config.finpulse_model_name = name
    config.finpulse_pooling = pooling_of(config)
    config.finpulse_input_prefix = input_prefix(config)
    config.finpulse_head_hidden = head_hidden if head_hidden is not None else head_hidden_of(config)
    config.architectures = ["BertForSentimentAndTopic"]
    return config


@dataclass
class SentimentTopicOutput(ModelOutput):
    """Logits of both heads; loss is set when at least one head's labels were given."""

    loss: torch.Tensor | None = None
    sentiment_logits: torch.Tensor | None = None
    topic_logits: torch.Tensor | None = None


class BertForSentimentAndTopic(BertPreTrainedModel):
    """Pooled encoder output (config.finpulse_pooling) -> dropout -> one head per task.

    A head is one linear layer, or with config.finpulse_head_hidden = n a small MLP (linear to n,
    GELU, dropout, linear): over a frozen encoder the MLP is what lifts the heads above a linear
    probe (docs/model-quality.md).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        if not getattr(config, "topic_labels", None):
            raise ValueError("config.topic_labels is missing; prepare the config with engines.modeling.configure_heads")
        if not getattr(config, "sentiment_labels", None):
            config.sentiment_labels = list(SENTIMENT_LABELS)
        self.pooling = pooling_of(config)
        self.bert = BertModel(config, add_pooling_layer=self.pooling == "cls")
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        hidden = head_hidden_of(config)
        self.sentiment_head = _head(config.hidden_size, len(config.sentiment_labels), hidden, dropout)
        self.topic_head = _head(config.hidden_size, len(config.topic_labels), hidden, dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        sentiment_labels: torch.Tensor | None = None,
        topic_labels: torch.Tensor | None = None,
    ) -> SentimentTopicOutput:
        pooled = self.dropout(self.pool(input_ids, attention_mask, token_type_ids))
        sentiment_logits = self.sentiment_head(pooled)
        topic_logits = self.topic_head(pooled)

        losses = [
            _head_loss(logits, labels)
            for logits, labels in ((sentiment_logits, sentiment_labels), (topic_logits, topic_labels))
            if labels is not None
        ]
        return SentimentTopicOutput(
            loss=sum(losses) if losses else None,
            sentiment_logits=sentiment_logits,
            topic_logits=topic_logits,
        )

    def pool(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One vector per row, what the heads read (before dropout); frozen-encoder training caches it."""
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True)
        if self.pooling == "cls":
            return out.pooler_output
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _head(width: int, n_labels: int, hidden: int, dropout: float) -> nn.Module:
    if not hidden:
        return nn.Linear(width, n_labels)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_labels))


def _head_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows whose label is not -100.

    A batch where every row is -100 for a head (mixed datasets that label only one task)
    contributes 0 rather than the NaN plain cross_entropy would give.
    """
    labels = labels.to(logits.device)
    n_valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid
