"""Training rows for BertForSentimentAndTopic: load, filter, split, encode, pad.

Labelled sets name their columns differently (the files in shared/data use `label` for
sentiment and `topics` lists or `topic` strings for topic), label only one of the two tasks,
and often ship without a split. Everything here turns them into one row shape where a missing
label is -100, so one loop can train both heads on a mix of such sets.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engines.modeling import IGNORE_INDEX
from engines.serving.batching import encode_texts
from engines.serving.types import SENTIMENT_LABELS

log = logging.getLogger(__name__)

UNKNOWN_LANG = "und"  # ISO 639-2 "undetermined", for files without a language column

# column -> accepted value(s); a row is kept only if every column matches.
Where = Mapping[str, str | Collection[str]]


@dataclass(frozen=True)
class Fields:
    """Column names in the source files; None switches that label off (the head then gets -100)."""

    text: str = "text"
    lang: str = "lang"
    sentiment: str | None = "sentiment"
    topic: str | None = "topic"


@dataclass(frozen=True)
class Example:
    """One labelled text; None means this row does not train (or score) that head."""

    text: str
    lang: str
    sentiment: str | None = None
    topic: str | None = None


def load_examples(
    paths: Iterable[str | Path],
    *,
    fields: Fields = Fields(),
    where: Where | None = None,
) -> list[Example]:
    """Read JSONL (.jsonl/.json) or CSV (.csv) files into Examples, in file order.

    Rows that fail `where` or carry neither label are skipped. A sentiment value outside
    negative/neutral/positive is an error rather than a silent drop, so that e.g. chABSA's
    `mixed` rows must be filtered out on purpose (where={"label": [...]}).
    """
    examples: list[Example] = []
    for path in map(Path, paths):
        kept = unlabelled = 0
        for line, row in _read_rows(path):
            if not _matches(row, where):
                continue
            try:
                example = _to_example(row, fields)
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {err}") from None
            if example.sentiment is None and example.topic is None:
                unlabelled += 1
                continue
            examples.append(example)
            kept += 1
        log.info("%s: %d rows kept, %d without any label skipped", path, kept, unlabelled)
    return examples


def load_texts(paths: Iterable[str | Path], *, field: str = "text", where: Where | None = None) -> list[str]:
    """The `field` of every row that passes `where`, labelled or not (distillation needs no labels)."""
    texts: list[str] = []
    for path in map(Path, paths):
        for line, row in _read_rows(path):
            if not _matches(row, where):
                continue
            if field not in row:
                raise ValueError(f"{path}:{line}: no {field!r} field (columns: {sorted(row)})")
            texts.append(str(row[field] or ""))
    return texts


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) so that errors can point at the offending line."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as f:
        if suffix in (".jsonl", ".json"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, json.loads(line)
        elif suffix == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .csv")


def _matches(row: Mapping[str, Any], where: Where | None) -> bool:
    for column, wanted in (where or {}).items():
        value = row.get(column)
        # JSON true/1 and CSV "true"/"1" should both match the string a caller writes.
        value = value if isinstance(value, str) else json.dumps(value)
        accepted = {wanted} if isinstance(wanted, str) else set(wanted)
        if value not in accepted:
            return False
    return True


def _to_example(row: Mapping[str, Any], fields: Fields) -> Example:
    if fields.text not in row:
        raise ValueError(f"no {fields.text!r} field (columns: {sorted(row)})")
    sentiment = _label(row.get(fields.sentiment)) if fields.sentiment else None
    if sentiment is not None:
        sentiment = sentiment.lower()
        if sentiment not in SENTIMENT_LABELS:
            raise ValueError(f"sentiment {sentiment!r} is not one of {list(SENTIMENT_LABELS)}; "
                             "filter it out with where")
    return Example(
        text=str(row[fields.text] or ""),
        lang=_label(row.get(fields.lang)) or UNKNOWN_LANG,
        sentiment=sentiment,
        topic=_label(row.get(fields.topic)) if fields.topic else None,
    )


def _label(value: Any) -> str | None:
    """A multi-label list counts as its first label; None, "" and [] mean "no label"."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    return str(value).strip() or None


def topic_labels_of(examples: Iterable[Example]) -> list[str]:
    """Sorted union of the topics present: the topic head's id -> label map."""
    return sorted({e.topic for e in examples if e.topic is not None})


def split_holdout(
    examples: Sequence[Example], *, fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Deterministic (train, held-out) split for sets published without one.

    Rows are grouped by (sentiment, topic, lang) and shuffled within each group by `seed`;
    walking the groups in a fixed order, every 1/fraction-th row goes to held-out. That holds
    out exactly round-down(fraction * n) rows overall and, per group, its share give or take
    one row, so labels and languages keep their proportions wherever group sizes allow.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[(e.sentiment or "", e.topic or "", e.lang)].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    position = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for i in members:
            position += 1
            if int(position * fraction) > int((position - 1) * fraction):
                held.add(i)
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


def label_counts(examples: Iterable[Example], head: str) -> Counter[str]:
    """Label frequencies of one head ("sentiment" or "topic"), for class weights and logs."""
    return Counter(label for e in examples if (label := getattr(e, head)) is not None)


def class_weights_of(
    rows: Sequence[Example], labels: Mapping[str, list[str]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Inverse label frequency, n / (k * count): all ones on a balanced set, large for rare classes."""
    weights: dict[str, torch.Tensor] = {}
    for head, names in labels.items():
        counts = label_counts(rows, head)
        if counts:
            n, k = sum(counts.values()), len(counts)
            weights[head] = torch.tensor([n / (k * max(counts[c], 1)) for c in names], device=device)
    return weights


def parse_where(pairs: Sequence[str] | None) -> dict[str, list[str]] | None:
    """["source=fpb", "split=train", "split=val"] -> {"source": ["fpb"], "split": ["train", "val"]}."""
    if not pairs:
        return None
    where: dict[str, list[str]] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {pair!r}")
        where.setdefault(column, []).append(value)
    return where


def log_rows(train_rows: Sequence[Example], dev_rows: Sequence[Example], labels: Mapping[str, list[str]]) -> None:
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        for head in ("sentiment", "topic"):
            counts = label_counts(rows, head)
            log.info("%s %s: %d labelled of %d rows %s", split, head, sum(counts.values()), len(rows), dict(counts))
    unseen = set(label_counts(dev_rows, "topic")) - set(labels["topic"])
    if unseen:
        log.warning("dev topics not in the training rows (they count as errors): %s", sorted(unseen))


def load_split(
    train_files: Sequence[str | Path],
    dev_files: Sequence[str | Path] | None,
    fields: Fields,
    where: Where | None,
    dev_where: Where | None,
    dev_fraction: float,
    seed: int,
) -> tuple[list[Example], list[Example]]:
    """(training rows, dev rows): dev_files filtered by dev_where (default where), or a seeded held-out share."""
    rows = load_examples(train_files, fields=fields, where=where)
    if dev_files:
        dev = load_examples(dev_files, fields=fields, where=where if dev_where is None else dev_where)
    else:
        rows, dev = split_holdout(rows, fraction=dev_fraction, seed=seed)
    if not rows or not dev:
        raise ValueError(f"need labelled rows for both sides: {len(rows)} training, {len(dev)} dev")
    return rows, dev


def encode(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    sentiment_labels: Sequence[str],
    topic_labels: Sequence[str],
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Tokenise once up front (unpadded) and map labels to ids; a list is a map-style Dataset.

    `row` is the example's index, so predictions gathered from several processes can be
    matched back to their gold labels and language.
    """
    input_ids = encode_texts(tokenizer, [e.text for e in examples], max_length=max_length, prefix=prefix)
    sentiment_ids = {label: i for i, label in enumerate(sentiment_labels)}
    topic_ids = {label: i for i, label in enumerate(topic_labels)}
    return [
        {
            "input_ids": ids,
            "sentiment_labels": sentiment_ids.get(e.sentiment, IGNORE_INDEX),
            "topic_labels": topic_ids.get(e.topic, IGNORE_INDEX),
            "row": i,
        }
        for i, (e, ids) in enumerate(zip(examples, input_ids))
    ]


def pad_batch(rows: Sequence[Mapping[str, Any]], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Collate to the longest row in the batch (dynamic padding), not to max_length."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
        attention_mask[i, : len(r["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in ("sentiment_labels", "topic_labels", "row"):
        batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
    return batch
