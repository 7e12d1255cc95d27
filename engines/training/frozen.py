"""--freeze-encoder: train only the two heads, over pooled vectors computed once.

While the encoder is frozen, the vector a head reads for a text never changes. So each text
is embedded once, kept in a cache file keyed by the encoder's weights, pooling, prefix and
max_length, and the heads (two linear layers) train over those vectors in seconds. Training
again with other rows, epochs or learning rates re-embeds only the texts not seen before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.utils import cached_file

from engines.modeling import IGNORE_INDEX, BertForSentimentAndTopic, pooling_of
from engines.serving.batching import encode_texts
from engines.serving.checkpoint import WEIGHTS_NAME, input_prefix, sha256_file
from engines.training.checkpoints import EVAL_FILE
from engines.training.data import Example
from engines.training.evaluate import evaluate, mean_macro_f1, render_report

HEADS = ("sentiment", "topic")
log = logging.getLogger(__name__)
EMBED_TOKEN_BUDGET = 8192  # padded tokens per encoder pass while embedding


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finpulse" / "pooled"


class PooledCache:
    """Pooled vectors by text for one encoder configuration, in one torch file."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / f"{key}.pt"
        stored = torch.load(self.path) if self.path.is_file() else {"index": {}, "vectors": torch.empty(0)}
        self.index: dict[str, int] = stored["index"]
        self.vectors: torch.Tensor = stored["vectors"]

    def missing(self, texts: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if _text_key(t) not in self.index))

    def add(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        start = len(self.index)
        for offset, text in enumerate(texts):
            self.index[_text_key(text)] = start + offset
        self.vectors = vectors if start == 0 else torch.cat([self.vectors, vectors])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        torch.save({"index": self.index, "vectors": self.vectors}, temp)
        temp.replace(self.path)

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        return self.vectors[[self.index[_text_key(t)] for t in texts]]


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def encoder_key(model: BertForSentimentAndTopic, weights_sha256: str, max_length: int) -> str:
    """What the pooled vectors depend on: the encoder weights, pooling, prefix and the token cut."""
    parts = [weights_sha256, pooling_of(model.config), input_prefix(model.config), str(max_length)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


@torch.inference_mode()
def embed(
    model: BertForSentimentAndTopic, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int,
) -> torch.Tensor:
    """[len(texts), hidden] pooled vectors, in length-sorted token-budget batches (less padding)."""
    model.eval()
    ids = encode_texts(tokenizer, texts, max_length=max_length, prefix=input_prefix(model.config))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    bar = tqdm(total=len(ids), desc="embedding (once per text)", unit="text")
    start = 0
    while start < len(order):
        end = start + 1  # lengths ascend, so the last row of a batch sets its width
        while end < len(order) and len(ids[order[end]]) * (end - start + 1) <= EMBED_TOKEN_BUDGET:
            end += 1
        batch = order[start:end]
        width = len(ids[batch[-1]])
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        out[batch] = model.pool(input_ids.to(model.device), mask.to(model.device)).float().cpu()
        bar.update(len(batch))
        start = end
    bar.close()
    return out


def pooled(
    model: BertForSentimentAndTopic, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
    max_length: int, cache: PooledCache,
) -> torch.Tensor:
    if missing := cache.missing(texts):
        cache.add(missing, embed(model, tokenizer, missing, max_length=max_length))
    return cache.get(texts)


def train_frozen(
    base: str,
    model: BertForSentimentAndTopic,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Sequence[Example],
    dev_rows: Sequence[Example],
    labels: Mapping[str, list[str]],
    out_dir: Path,
    *,
    max_length: int,
    cache_dir: Path,
    **fit: Any,
) -> dict[str, Any]:
    """Heads only: embed each text once (cached), fit the heads, save the best epoch's model."""
    torch.manual_seed(fit["seed"])
    cache = PooledCache(cache_dir, encoder_key(model, sha256_file(cached_file(base, WEIGHTS_NAME)), max_length))
    vectors = {split: pooled(model, tokenizer, [r.text for r in rows], max_length=max_length, cache=cache)
               for split, rows in (("train", train_rows), ("dev", dev_rows))}
    report, best_epoch = fit_heads(model, vectors["train"], train_rows, vectors["dev"], dev_rows, labels, **fit)
    log.info("heads: best dev macro-F1 %.4f at epoch %d", mean_macro_f1(report), best_epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / EVAL_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    Console().print(render_report(report, title=f"dev (frozen encoder, best epoch {best_epoch})"))
    return report


def fit_heads(
    model: BertForSentimentAndTopic,
    train_vectors: torch.Tensor,
    train_rows: Sequence[Example],
    dev_vectors: torch.Tensor,
    dev_rows: Sequence[Example],
    labels: Mapping[str, list[str]],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    class_weights: Mapping[str, torch.Tensor],
    patience: int | None,
    seed: int,
) -> tuple[dict[str, Any], int]:
    """Train model's heads on the vectors; keep the epoch with the best dev macro-F1: (its report, epoch)."""
    generator = torch.Generator().manual_seed(seed)
    targets = {head: _targets(train_rows, head, labels[head]) for head in HEADS}
    heads = {"sentiment": model.sentiment_head, "topic": model.topic_head}
    params = [p for head in heads.values() for p in head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    dropout = model.dropout
    best: tuple[float, int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    bar = tqdm(range(1, epochs + 1), desc="heads", unit="epoch")
    for epoch in bar:
        dropout.train()
        for batch in torch.randperm(len(train_vectors), generator=generator).split(batch_size):
            x = dropout(train_vectors[batch])
            losses = []
            for head, layer in heads.items():
                y = targets[head][batch]
                if (y != IGNORE_INDEX).any():
                    losses.append(F.cross_entropy(layer(x), y, weight=class_weights.get(head), ignore_index=IGNORE_INDEX))
            optimizer.zero_grad()
            torch.stack(losses).sum().backward()
            optimizer.step()
        report = _evaluate(heads, dev_vectors, dev_rows, labels)
        score = mean_macro_f1(report)
        bar.set_postfix(dev_macro_f1=f"{score:.4f}")
        if best is None or score > best[0]:
            state = {name: tensor.clone() for name, tensor in model.state_dict().items() if "_head." in name}
            best = (score, epoch, report, state)
        elif patience is not None and epoch - best[1] >= patience:
            break
    assert best is not None
    model.load_state_dict(best[3], strict=False)
    return best[2], best[1]


@torch.no_grad()
def _evaluate(heads: Mapping[str, torch.nn.Linear], vectors: torch.Tensor, rows: Sequence[Example],
              labels: Mapping[str, list[str]]) -> dict[str, Any]:
    pred = {head: [labels[head][i] for i in layer(vectors).argmax(-1).tolist()] for head, layer in heads.items()}
    gold = {head: [getattr(r, head) for r in rows] for head in HEADS}
    return evaluate(gold, pred, [r.lang for r in rows], labels)


def _targets(rows: Sequence[Example], head: str, names: Sequence[str]) -> torch.Tensor:
    ids = {label: i for i, label in enumerate(names)}
    return torch.tensor([ids.get(getattr(r, head), IGNORE_INDEX) for r in rows], dtype=torch.long)
