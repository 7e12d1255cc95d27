"""Distil a BertForSentimentAndTopic teacher into a shallower student, on unlabelled text.

The student is the teacher with some encoder layers dropped: it keeps `layers` of them,
evenly spaced and ending with the last (whose output the heads were trained on), and starts
from their weights, the embeddings and both heads. It then learns to give the teacher's
pooled vector (squared error per dimension over that dimension's variance, the space heads
trained on standardised vectors read) and both heads' soft
distributions (KL divergence at a temperature) on texts without labels, so the stream's own
text is enough: a cheaper model needs no labelling, only the test sets to say what it costs.

The teacher's pooled vectors are computed once per text and cached (engines/training/frozen.py),
so a second run with other settings re-embeds nothing. The word-embedding table stays frozen:
in a multilingual vocabulary it holds most of the weights and texts in a language the
unlabelled data lacks must keep the teacher's embeddings.

The best epoch (highest mean label agreement with the teacher on held-out texts) is saved as a
load_engine-ready directory with distill.json. Labelled test sets, when given, are scored with
both models so that the quality cost is stated in macro-F1, not only in agreement. Training
runs on the GPU when there is one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from engines.modeling import BertForSentimentAndTopic
from engines.serving.batching import budget_batches, encode_texts, pad_rows
from engines.serving.checkpoint import WEIGHTS_NAME, input_prefix, sha256_file
from engines.training.data import Example
from engines.training.evaluate import evaluate
from engines.training.frozen import PooledCache, default_cache_dir, embed, encoder_key, pooled

REPORT_FILE = "distill.json"
HEADS = ("sentiment", "topic")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    layers: int = 6
    epochs: int = 2
    learning_rate: float = 1e-4
    token_budget: int = 2048  # padded tokens per training step
    max_length: int = 128
    temperature: float = 2.0
    vector_weight: float = 1.0  # weight of the pooled-vector loss beside the two heads' KL
    warmup_fraction: float = 0.06
    dev_fraction: float = 0.1
    seed: int = 13


def kept_layers(total: int, keep: int) -> list[int]:
    """Evenly spaced layer indices ending with the last: 12 -> 6 keeps 1, 3, 5, 7, 9, 11."""
    if not 0 < keep <= total:
        raise ValueError(f"the student keeps 1 to {total} layers, not {keep}")
    return [math.floor((i + 1) * total / keep + 0.5) - 1 for i in range(keep)]  # halves up, not to even


def make_student(teacher: BertForSentimentAndTopic, layers: int) -> BertForSentimentAndTopic:
    """A copy of the teacher with only kept_layers(…) of its encoder layers, weights included."""
    keep = kept_layers(teacher.config.num_hidden_layers, layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    teacher_name = getattr(teacher.config, "finpulse_model_name", None) or teacher.config.model_type
    config.finpulse_model_name = f"{teacher_name}-distilled-{layers}l"
    config.finpulse_distilled_from = {"model": teacher_name, "layers": keep}
    student = BertForSentimentAndTopic(config)
    renamed = {}
    for name, tensor in teacher.state_dict().items():
        prefix = "bert.encoder.layer."
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) not in keep:
                continue
            name = f"{prefix}{keep.index(int(index))}.{rest}"
        renamed[name] = tensor
    student.load_state_dict(renamed, strict=True)
    return student


def teacher_targets(
    teacher: BertForSentimentAndTopic, teacher_dir: Path, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
    *, max_length: int, cache_dir: Path,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's pooled vectors (cached per text) and both heads' logits on them."""
    cache = PooledCache(cache_dir, encoder_key(teacher, sha256_file(teacher_dir / WEIGHTS_NAME), max_length))
    vectors = pooled(teacher, tokenizer, texts, max_length=max_length, cache=cache)
    with torch.inference_mode():
        on_device = vectors.to(teacher.device)
        logits = {"sentiment": teacher.sentiment_head(on_device).cpu(), "topic": teacher.topic_head(on_device).cpu()}
    return vectors, logits


def distill(
    teacher_dir: Path,
    texts: Sequence[str],
    out_dir: Path,
    settings: DistillSettings = DistillSettings(),
    *,
    tests: Mapping[str, Sequence[Example]] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and save the student; return (and write to out_dir/distill.json) what it measured."""
    if settings.epochs < 1:
        raise ValueError(f"distilling needs at least 1 epoch, got {settings.epochs}")
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = BertForSentimentAndTopic.from_pretrained(teacher_dir).eval().to(device)
    kept_layers(teacher.config.num_hidden_layers, settings.layers)  # refuse a bad count before any work
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(settings.seed).shuffle(unique)
    n_dev = max(1, round(len(unique) * settings.dev_fraction))
    if len(unique) - n_dev < 1:
        raise ValueError(f"need at least 2 distinct non-empty texts, got {len(unique)}")
    train_texts, dev_texts = unique[n_dev:], unique[:n_dev]
    log.info("distilling %s into %d layers on %d texts (%d held out)", teacher_dir, settings.layers,
             len(train_texts), len(dev_texts))

    cache_dir = cache_dir or default_cache_dir()
    train_vectors, train_logits = teacher_targets(teacher, teacher_dir, tokenizer, train_texts,
                                                  max_length=settings.max_length, cache_dir=cache_dir)
    dev_vectors, dev_logits = teacher_targets(teacher, teacher_dir, tokenizer, dev_texts,
                                              max_length=settings.max_length, cache_dir=cache_dir)
    train_ids = encode_texts(tokenizer, train_texts, max_length=settings.max_length, prefix=input_prefix(teacher.config))

    student = make_student(teacher, settings.layers).to(device)
    student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    batches_per_epoch = len(_shuffled_batches(train_ids, settings.token_budget, random.Random(0)))
    total_steps = batches_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * settings.warmup_fraction), total_steps)
    # Per dimension: heads trained on standardised vectors (frozen.py) amplify the low-variance ones.
    vector_scale = train_vectors.var(dim=0).clamp(min=1e-8).to(device)

    epochs: list[dict[str, Any]] = [{"epoch": 0, **_agreement(student, tokenizer, dev_texts, dev_vectors, dev_logits,
                                                               settings.max_length)}]
    log.info("before training: %s", epochs[0])
    best = -1.0
    rng = random.Random(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        student.train()
        losses = []
        for batch in tqdm(_shuffled_batches(train_ids, settings.token_budget, rng), desc=f"distil epoch {epoch}",
                          unit="batch"):
            input_ids, mask = (torch.from_numpy(a).to(device) for a in pad_rows([train_ids[i] for i in batch],
                                                                                tokenizer.pad_token_id))
            loss = _loss(student, input_ids, mask, train_vectors[batch].to(device),
                         {h: train_logits[h][batch].to(device) for h in HEADS}, vector_scale, settings)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        row = {"epoch": epoch, "train_loss": fmean(losses),
               **_agreement(student, tokenizer, dev_texts, dev_vectors, dev_logits, settings.max_length)}
        epochs.append(row)
        log.info("epoch %d: %s", epoch, row)
        score = fmean(row[f"{h}_agreement"] for h in HEADS)
        if score > best:
            best = score
            student.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)

    best_student = BertForSentimentAndTopic.from_pretrained(out_dir).eval().to(device)
    report: dict[str, Any] = {
        "teacher": str(teacher_dir),
        "teacher_layers": teacher.config.num_hidden_layers,
        "kept_layers": kept_layers(teacher.config.num_hidden_layers, settings.layers),
        "settings": asdict(settings),
        "texts": {"train": len(train_texts), "dev": len(dev_texts)},
        "epochs": epochs,
        "best_epoch": max(epochs[1:], key=lambda r: fmean(r[f"{h}_agreement"] for h in HEADS))["epoch"],
        "seconds": round(time.monotonic() - started, 1),
        "tests": {name: compare_on(teacher, best_student, tokenizer, rows, settings)
                  for name, rows in (tests or {}).items()},
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _shuffled_batches(ids: Sequence[Sequence[int]], token_budget: int, rng: random.Random) -> list[list[int]]:
    """Length-sorted token-budget batches (little padding), in random order; ties of length shuffled."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), rng.random()))
    batches = list(budget_batches(order, ids, token_budget))
    rng.shuffle(batches)
    return batches


def _loss(
    student: BertForSentimentAndTopic, input_ids: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor,
    logits: Mapping[str, torch.Tensor], vector_scale: torch.Tensor, settings: DistillSettings,
) -> torch.Tensor:
    vector = student.pool(input_ids, mask)
    loss = settings.vector_weight * ((vector - vectors) ** 2 / vector_scale).mean()
    pooled_out = student.dropout(vector)
    t = settings.temperature
    for head, layer in (("sentiment", student.sentiment_head), ("topic", student.topic_head)):
        loss = loss + t * t * F.kl_div(F.log_softmax(layer(pooled_out) / t, dim=-1),
                                       F.log_softmax(logits[head] / t, dim=-1), log_target=True, reduction="batchmean")
    return loss


@torch.inference_mode()
def _answers(
    model: BertForSentimentAndTopic, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pooled vectors (on the CPU) and both heads' logits, in input order."""
    vectors = embed(model, tokenizer, texts, max_length=max_length, desc="scoring")
    on_device = vectors.to(model.device)
    return vectors, {"sentiment": model.sentiment_head(on_device).cpu(), "topic": model.topic_head(on_device).cpu()}


def _agreement(
    student: BertForSentimentAndTopic, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], vectors: torch.Tensor,
    logits: Mapping[str, torch.Tensor], max_length: int,
) -> dict[str, float]:
    """How closely the student follows the teacher on held-out texts."""
    got_vectors, got = _answers(student, tokenizer, texts, max_length)
    row = {"vector_cosine": F.cosine_similarity(got_vectors, vectors).mean().item()}
    for head in HEADS:
        row[f"{head}_agreement"] = (got[head].argmax(-1) == logits[head].argmax(-1)).float().mean().item()
    return row


def compare_on(
    teacher: BertForSentimentAndTopic, student: BertForSentimentAndTopic, tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Example], settings: DistillSettings,
) -> dict[str, Any]:
    """Macro-F1 of teacher and student on one labelled test set, per head and language."""
    texts = [r.text for r in rows]
    langs = [r.lang for r in rows]
    gold = {head: [getattr(r, head) for r in rows] for head in HEADS if any(getattr(r, head) for r in rows)}
    out: dict[str, Any] = {"n": len(rows)}
    for role, model in (("teacher", teacher), ("student", student)):
        _, logits = _answers(model, tokenizer, texts, settings.max_length)
        labels = {"sentiment": model.config.sentiment_labels, "topic": model.config.topic_labels}
        pred = {head: [labels[head][i] for i in logits[head].argmax(-1).tolist()] for head in gold}
        out[role] = evaluate(gold, pred, langs, labels)
    out["macro_f1_change"] = {
        head: out["student"][head]["all"]["macro_f1"] - out["teacher"][head]["all"]["macro_f1"] for head in gold
    }
    return out
