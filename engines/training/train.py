"""Fine-tune a pretrained BERT-family checkpoint into BertForSentimentAndTopic.

The output directory is what engines.load_engine reads (config with both label maps,
safetensors weights, tokenizer), holding the epoch with the best dev macro-F1, plus
eval.json (that epoch's dev metrics per head and language) and checkpoint-last/ (model,
optimizer, scheduler, RNG and loop state after the latest epoch) to resume from.

Accelerate owns devices, DDP, gradient accumulation and autocast, so the same loop runs on
one CPU, one GPU or many (`accelerate launch -m engines.training.train ...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
)
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from engines.modeling import (
    IGNORE_INDEX,
    BertForSentimentAndTopic,
    SentimentTopicOutput,
    configure_heads,
)
from engines.serving.checkpoint import input_prefix
from engines.serving.types import SENTIMENT_LABELS
from engines.training.checkpoints import (
    CHECKPOINT_DIR,
    EVAL_FILE,
    TrainerState,
    restore,
    save_checkpoint,
    save_model,
)
from engines.training.data import (
    Example,
    Fields,
    Where,
    class_weights_of,
    encode,
    load_split,
    log_rows,
    pad_batch,
    parse_where,
    topic_labels_of,
)
from engines.training.evaluate import evaluate, mean_macro_f1, render_report
from engines.training.frozen import default_cache_dir, train_frozen

DEFAULT_BASE = "bert-base-multilingual-cased"
HEADS = ("sentiment", "topic")
# Topic head of a model trained on sentiment-only rows from a base without topic labels:
# one class, so it always answers "other" with probability 1 instead of random topics.
FALLBACK_TOPICS = ("other",)

log = get_logger(__name__)  # Accelerate's adapter: logs once, on the main process


def train(
    base: str,
    train_files: Sequence[str | Path],
    dev_files: Sequence[str | Path] | None,
    out_dir: str | Path,
    *,
    fields: Fields = Fields(),
    where: Where | None = None,
    dev_where: Where | None = None,
    dev_fraction: float = 0.2,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    grad_accum_steps: int = 1,
    max_grad_norm: float = 1.0,
    max_length: int = 128,
    class_weights: bool = False,
    patience: int | None = None,
    seed: int = 42,
    mixed_precision: str = "auto",
    resume: bool = False,
    name: str | None = None,
    freeze_encoder: bool = False,
    freeze_word_embeddings: bool = False,
    cache_dir: Path | None = None,
    head_hidden: int | None = None,
    head_dropout: float | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` (hub id or directory) on train_files; return the best epoch's dev metrics.

    Without dev_files, a seeded, stratified dev_fraction of the training rows is held out.
    `where` filters the training files and, unless `dev_where` is given, the dev files too.
    class_weights weighs each head's loss by inverse label frequency; patience stops after that
    many epochs without a better dev macro-F1; mixed_precision "auto" is bf16 (or fp16) on CUDA
    and off on CPU; resume continues from out_dir/checkpoint-last when it exists.
    freeze_encoder trains the heads alone over pooled vectors embedded once (engines.training.frozen,
    cached in cache_dir); freeze_word_embeddings fine-tunes everything but the word embeddings (82 %
    of e5-small's weights), which saves memory and optimiser time on a CPU. head_hidden gives each
    head a hidden layer of that width (0: linear; None: as base has it); head_dropout sets the
    dropout before and inside the heads (None: the base's).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out_dir = Path(out_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accum_steps,
        mixed_precision=_resolve_precision(mixed_precision),
        # Per-epoch shuffles derived from the seed alone, so a resumed epoch sees the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        # A batch with no labelled row for one head leaves that head out of the graph.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(seed)
    train_rows, dev_rows = load_split(train_files, dev_files, fields, where, dev_where, dev_fraction, seed)
    tokenizer = _load_tokenizer(base)
    model = _load_model(base, topic_labels_of(train_rows), name or out_dir.name, head_hidden, head_dropout)
    labels = {"sentiment": list(model.config.sentiment_labels), "topic": list(model.config.topic_labels)}
    log_rows(train_rows, dev_rows, labels)
    if freeze_encoder:
        return train_frozen(
            base, model, tokenizer, train_rows, dev_rows, labels, out_dir, max_length=max_length, epochs=epochs,
            batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
            class_weights=class_weights_of(train_rows, labels, torch.device("cpu")) if class_weights else {},
            patience=patience, seed=seed, cache_dir=cache_dir or default_cache_dir(),
        )
    if freeze_word_embeddings:
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)

    encode_labels = partial(encode, tokenizer=tokenizer, max_length=max_length, prefix=input_prefix(model.config),
                            sentiment_labels=labels["sentiment"], topic_labels=labels["topic"])
    collate = partial(pad_batch, pad_token_id=tokenizer.pad_token_id)
    train_loader = DataLoader(encode_labels(train_rows), batch_size=batch_size, shuffle=True, collate_fn=collate)
    # Length-sorted dev batches waste less padding; rows are matched back by their index.
    dev_encoded = sorted(encode_labels(dev_rows), key=lambda r: len(r["input_ids"]))
    dev_loader = DataLoader(dev_encoded, batch_size=batch_size, collate_fn=collate)

    total_updates = math.ceil(len(train_loader) / grad_accum_steps) * epochs
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_updates), total_updates)
    weights = class_weights_of(train_rows, labels, accelerator.device) if class_weights else {}
    model, optimizer, train_loader, dev_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, dev_loader, scheduler
    )

    checkpoint = out_dir / CHECKPOINT_DIR
    state = TrainerState(topic_labels=labels["topic"])
    if resume:
        state = restore(accelerator, checkpoint, state)
    for epoch in range(state.epoch + 1, epochs + 1):
        if patience is not None and state.bad_epochs >= patience:
            log.info("early stop: dev macro-F1 has not improved for %d epochs (best: epoch %d, %.4f)",
                     state.bad_epochs, state.best_epoch, state.best_score)
            break
        train_loader.set_epoch(epoch)
        train_loss = _train_epoch(accelerator, model, optimizer, scheduler, train_loader, weights, state, epoch,
                                  max_grad_norm)
        report = _evaluate(accelerator, model, dev_loader, dev_rows, labels)
        score = mean_macro_f1(report)
        state.epoch_log.append({"epoch": epoch, "step": state.global_step, "train_loss": train_loss,
                                "dev_macro_f1": score})
        log.info("epoch %d: train loss %.4f, dev macro-F1 %.4f", epoch, train_loss, score)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            save_model(accelerator, model, tokenizer, out_dir, report)
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        save_checkpoint(accelerator, checkpoint, state)

    accelerator.wait_for_everyone()
    report = json.loads((out_dir / EVAL_FILE).read_text(encoding="utf-8"))
    if accelerator.is_main_process:
        Console().print(render_report(report, title=f"dev (best epoch {state.best_epoch})"))
    return report


def _resolve_precision(choice: str) -> str:
    """"auto": bf16 where the GPU has it, else fp16 on CUDA; full precision on CPU."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _load_tokenizer(base: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(base)
    if not tokenizer.is_fast:
        raise ValueError(f"{base}: a fast (tokenizers-backed) tokenizer is required, as the engine needs one")
    return tokenizer


def _load_model(
    base: str, data_topics: list[str], name: str, head_hidden: int | None = None, head_dropout: float | None = None
) -> BertForSentimentAndTopic:
    """Encoder weights from base; heads from base only where base is a finpulse model with the same labels.

    A plain BertModel / BertForPreTraining / sentence-transformers directory has no heads, so
    both are initialised fresh (transformers logs which weights were missing).
    """
    config = AutoConfig.from_pretrained(base)
    if config.model_type != "bert":
        raise ValueError(f"{base}: model_type {config.model_type!r}; BertForSentimentAndTopic needs a BERT checkpoint")
    base_topics = list(getattr(config, "topic_labels", None) or [])
    topics = data_topics or base_topics or list(FALLBACK_TOPICS)
    if not data_topics:
        log.warning("no topic labels in the training rows; the topic head keeps %s untrained", topics)
    configure_heads(config, topic_labels=topics, name=name, head_hidden=head_hidden,
                    sentiment_labels=getattr(config, "sentiment_labels", None) or SENTIMENT_LABELS)
    if head_dropout is not None:
        config.classifier_dropout = head_dropout
    model = BertForSentimentAndTopic.from_pretrained(base, config=config, ignore_mismatched_sizes=True,
                                                     dtype=torch.float32)
    if base_topics and base_topics != topics:
        # A same-sized head would load silently, its rows meaning the base's topics, not these.
        model.topic_head.apply(model._init_weights)
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (the 1-D parameters), as in BERT."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _loss(
    out: SentimentTopicOutput, batch: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of each head's (weighted) mean cross-entropy over its labelled rows.

    A head without any labelled row in the batch is left out altogether rather than added as
    0, so its parameters get no gradient at all and AdamW does not even decay them.
    """
    losses: dict[str, torch.Tensor] = {}
    for head in HEADS:
        targets = batch[f"{head}_labels"]
        labelled = targets != IGNORE_INDEX
        if labelled.any():
            logits = getattr(out, f"{head}_logits")[labelled].float()
            losses[head] = F.cross_entropy(logits, targets[labelled], weight=weights.get(head))
    total = torch.stack(list(losses.values())).sum()
    return total, {"loss": total.item(), **{f"{head}_loss": loss.item() for head, loss in losses.items()}}


def _train_epoch(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: DataLoader,
    weights: Mapping[str, torch.Tensor],
    state: TrainerState,
    epoch: int,
    max_grad_norm: float,
) -> float:
    """One pass over the training rows; appends one step_log entry per optimizer update."""
    model.train()
    pending: list[dict[str, float]] = []  # micro-batch losses since the last update
    update_losses: list[float] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.accumulate(model):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss, parts = _loss(out, batch, weights)
            accelerator.backward(loss)
            if accelerator.sync_gradients and max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        pending.append(parts)
        if accelerator.sync_gradients:
            state.global_step += 1
            record = {"step": state.global_step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **_mean(pending)}
            state.step_log.append(record)
            update_losses.append(record["loss"])
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            pending = []
    return fmean(update_losses)


def _mean(parts: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Average each loss over the micro-batches that had it; None for a head no micro-batch trained."""
    keys = ["loss", *(f"{head}_loss" for head in HEADS)]
    return {k: fmean(values) if (values := [p[k] for p in parts if k in p]) else None for k in keys}


@torch.no_grad()
def _evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    loader: DataLoader,
    rows: Sequence[Example],
    labels: Mapping[str, list[str]],
) -> dict[str, Any]:
    """Argmax predictions on the dev rows, gathered from all processes, scored per head and language."""
    model.eval()
    order: list[int] = []
    pred: dict[str, list[str]] = {head: [] for head in HEADS}
    for batch in tqdm(loader, desc="dev", leave=False, disable=not accelerator.is_local_main_process):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        row, sentiment, topic = accelerator.gather_for_metrics(
            (batch["row"], out.sentiment_logits.argmax(-1), out.topic_logits.argmax(-1))
        )
        order += row.tolist()
        pred["sentiment"] += [labels["sentiment"][i] for i in sentiment.tolist()]
        pred["topic"] += [labels["topic"][i] for i in topic.tolist()]
    gold = {head: [getattr(rows[r], head) for r in order] for head in HEADS}
    return evaluate(gold, pred, [rows[r].lang for r in order], labels)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: python -m engines.training.train (or accelerate launch -m engines.training.train) --help."""
    p = argparse.ArgumentParser(prog="python -m engines.training.train", description=__doc__.splitlines()[0])
    p.add_argument("--base", default=DEFAULT_BASE, help="hub id or directory of a BERT-family checkpoint")
    p.add_argument("--train", nargs="+", required=True, type=Path, help=".jsonl/.csv training files")
    p.add_argument("--dev", nargs="+", type=Path, help="dev files (default: hold out --dev-fraction of --train)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--text-field", default="text")
    p.add_argument("--lang-field", default="lang")
    p.add_argument("--sentiment-field", default="sentiment", help='"" = no sentiment labels')
    p.add_argument("--topic-field", default="topic", help='"" = no topic labels')
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE", help="keep matching rows (repeatable)")
    p.add_argument("--dev-where", action="append", metavar="COLUMN=VALUE", help="filter for --dev (default --where)")
    p.add_argument("--dev-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--class-weights", action="store_true", help="weigh losses by inverse label frequency")
    p.add_argument("--patience", type=int, help="early-stop after this many epochs without a better dev macro-F1")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last")
    p.add_argument("--name", help="model name recorded in config.json (default: OUT's name)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train the heads only, over pooled vectors embedded once and cached (seconds per run)")
    p.add_argument("--freeze-word-embeddings", action="store_true",
                   help="fine-tune all but the word embeddings (less memory and optimiser time on CPU)")
    p.add_argument("--head-hidden", type=int, help="hidden width of each head (0: one linear layer; default: base's)")
    p.add_argument("--head-dropout", type=float, help="dropout before and inside the heads (default: base's)")
    p.add_argument("--cache-dir", type=Path, help="pooled-vector cache for --freeze-encoder "
                                                  "(default: ~/.cache/finpulse/pooled)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(
        args.base, args.train, args.dev, args.out,
        fields=Fields(text=args.text_field, lang=args.lang_field,
                      sentiment=args.sentiment_field or None, topic=args.topic_field or None),
        where=parse_where(args.where), dev_where=parse_where(args.dev_where), dev_fraction=args.dev_fraction,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, grad_accum_steps=args.grad_accum_steps, max_length=args.max_length,
        class_weights=args.class_weights, patience=args.patience, seed=args.seed,
        mixed_precision=args.mixed_precision, resume=args.resume, name=args.name,
        freeze_encoder=args.freeze_encoder, freeze_word_embeddings=args.freeze_word_embeddings, cache_dir=args.cache_dir,
        head_hidden=args.head_hidden, head_dropout=args.head_dropout,
    )


if __name__ == "__main__":
    main()
