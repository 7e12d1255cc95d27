"""--freeze-encoder: train only the two heads, over pooled vectors computed once.

While the encoder is frozen, the vector a head reads for a text never changes. So each text
is embedded once, kept in a cache file keyed by the encoder's weights, pooling, prefix and
max_length, and the heads (a linear layer or a small MLP each) train over those vectors in seconds. Training
again with other rows, epochs or learning rates re-embeds only the texts not seen before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.utils import cached_file

from engines.modeling import IGNORE_INDEX, BertForSentimentAndTopic, pooling_of
from engines.serving.batching import budget_batches, encode_texts, pad_rows
from engines.serving.checkpoint import WEIGHTS_NAME, input_prefix, sha256_file
from engines.training.checkpoints import EVAL_FILE
from engines.training.data import Example
from engines.training.evaluate import classification_report, evaluate, mean_macro_f1, render_report

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
        """Texts not cached yet, one per key (texts that differ only in lone surrogates share one)."""
        unseen = {_text_key(t): t for t in texts}
        return [text for key, text in unseen.items() if key not in self.index]

    def add(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        """Append vectors for texts (distinct keys, as missing() gives them) and save the file."""
        start = len(self.vectors)
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
    desc: str = "embedding (once per text)",
) -> torch.Tensor:
    """[len(texts), hidden] pooled vectors, in length-sorted token-budget batches (less padding)."""
    model.eval()
    ids = encode_texts(tokenizer, texts, max_length=max_length, prefix=input_prefix(model.config))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    bar = tqdm(total=len(ids), desc=desc, unit="text")
    for batch in budget_batches(order, ids, EMBED_TOKEN_BUDGET):
        input_ids, mask = pad_rows([ids[i] for i in batch], tokenizer.pad_token_id)
        out[batch] = model.pool(torch.from_numpy(input_ids).to(model.device),
                                torch.from_numpy(mask).to(model.device)).float().cpu()
        bar.update(len(batch))
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
    report, best_epochs = fit_heads(model, vectors["train"], train_rows, vectors["dev"], dev_rows, labels, **fit)
    log.info("heads: dev macro-F1 %.4f, best epochs %s", mean_macro_f1(report), best_epochs)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / EVAL_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    Console().print(render_report(report, title=f"dev (frozen encoder, best epochs {best_epochs})"))
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
) -> tuple[dict[str, Any], dict[str, int]]:
    """Train each head on its labelled rows and keep its epoch with the best dev macro-F1.

    The heads share nothing, so each gets its own best epoch (a 3-class sentiment head peaks
    long before a 20-topic head). The score is the mean of the per-language macro-F1s, so that
    the language with the most dev rows does not choose the epoch for all the others. Inputs
    are standardised per dimension while training, which a linear layer cannot learn quickly
    by itself, and the standardisation is then folded into the head's first layer, so the
    served model reads the raw pooled vector. Returns the dev report of the final heads and
    each head's best epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    best_epochs = {}
    for head in HEADS:
        layer: nn.Module = getattr(model, f"{head}_head")
        y, y_dev = _targets(train_rows, head, labels[head]), _targets(dev_rows, head, labels[head])
        rows, dev = (y != IGNORE_INDEX).nonzero().squeeze(1), (y_dev != IGNORE_INDEX).nonzero().squeeze(1)
        if not len(rows) or not len(dev):
            continue
        dev_langs = [dev_rows[i].lang for i in dev.tolist()]
        mean, std = train_vectors[rows].mean(0), train_vectors[rows].std(0).clamp(min=1e-6)
        x, x_dev, y, y_dev = (train_vectors[rows] - mean) / std, (dev_vectors[dev] - mean) / std, y[rows], y_dev[dev]
        optimizer = torch.optim.AdamW(layer.parameters(), lr=learning_rate, weight_decay=weight_decay)
        best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
        bar = tqdm(range(1, epochs + 1), desc=f"{head} head", unit="epoch")
        for epoch in bar:
            layer.train()
            model.dropout.train()
            for batch in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = F.cross_entropy(layer(model.dropout(x[batch])), y[batch], weight=class_weights.get(head))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            layer.eval()
            with torch.no_grad():
                predicted = layer(x_dev).argmax(-1)
            score = _mean_over_languages(y_dev, predicted, dev_langs, labels[head])
            bar.set_postfix(dev_macro_f1=f"{score:.4f}")
            if score > best[0]:
                best = (score, epoch, {k: v.clone() for k, v in layer.state_dict().items()})
            elif patience is not None and epoch - best[1] >= patience:
                break
        bar.close()
        layer.load_state_dict(best[2])
        _fold_standardisation(layer, mean, std)
        best_epochs[head] = best[1]
    model.eval()
    heads = {head: getattr(model, f"{head}_head") for head in HEADS}
    return _evaluate(heads, dev_vectors, dev_rows, labels), best_epochs


def _mean_over_languages(gold: torch.Tensor, predicted: torch.Tensor, langs: Sequence[str], names: Sequence[str]) -> float:
    by_lang: dict[str, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(i)
    return fmean(
        classification_report([names[gold[i]] for i in rows], [names[predicted[i]] for i in rows], names)["macro_f1"]
        for rows in by_lang.values()
    )


@torch.no_grad()
def _fold_standardisation(layer: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """W((x - mean) / std) + b == (W / std) x + (b - W (mean / std)): the head then reads raw vectors."""
    first = layer if isinstance(layer, nn.Linear) else layer[0]
    first.bias -= first.weight @ (mean / std)
    first.weight /= std


@torch.no_grad()
def _evaluate(heads: Mapping[str, nn.Module], vectors: torch.Tensor, rows: Sequence[Example],
              labels: Mapping[str, list[str]]) -> dict[str, Any]:
    pred = {head: [labels[head][i] for i in layer(vectors).argmax(-1).tolist()] for head, layer in heads.items()}
    gold = {head: [getattr(r, head) for r in rows] for head in HEADS}
    return evaluate(gold, pred, [r.lang for r in rows], labels)


def _targets(rows: Sequence[Example], head: str, names: Sequence[str]) -> torch.Tensor:
    ids = {label: i for i, label in enumerate(names)}
    return torch.tensor([ids.get(getattr(r, head), IGNORE_INDEX) for r in rows], dtype=torch.long)
