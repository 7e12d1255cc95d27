"""Reproducible data for docs/model-quality.md: a seeded multilingual split and the TF-IDF baseline.

    python -m engines.training.quality split --data ../shared/data --out /tmp/fq   # train.jsonl, dev.jsonl
    python -m engines.training.quality baseline --split /tmp/fq                     # TF-IDF + LR on the same split
    python -m engines.training.quality compare --model DIR --data FILE               # backends: docs/s and macro-F1
        [--backends torch,onnxruntime-int8,onnxruntime:other.int8.onnx]               # any exports of the same weights
    python -m engines.training.quality calibration --data FILE --out C.jsonl        # training-side texts for static int8
    python -m engines.training.quality plot --model-eval DIR/eval.json --baseline B --out PNG
    python -m engines.training.quality tests --model DIR --data ../shared/data --split /tmp/fq --out R.json
                                                                                     # published test sets

The split pools the financial sentiment sets, the 8-language tweets and MultiFin's topics,
capped per source so a CPU run stays within minutes, and holds out a stratified share.
Rows carry `sentiment` or `topic` (never both: no set labels both heads).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engines.training.data import Example, Fields, load_examples, split_holdout
from engines.training.evaluate import evaluate, render_report

# (file, label field, head, row filter); the filters keep each set's training rows.
SOURCES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("fin_sentiment_en.jsonl", "label", "sentiment", {}),
    ("tfn_sentiment.jsonl", "label", "sentiment", {"split": "train"}),
    ("finances_es.jsonl", "label", "sentiment", {"split": "train"}),
    ("xlmt_sentiment.jsonl", "label", "sentiment", {"split": "train"}),
    ("multifin_topic.jsonl", "topics", "topic", {}),
)


def build_split(data_dir: Path, *, cap: int, dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    pooled: list[Example] = []
    rng = random.Random(seed)
    for name, field, head, where in SOURCES:
        fields = Fields(sentiment=field if head == "sentiment" else None, topic=field if head == "topic" else None)
        rows = load_examples([data_dir / name], fields=fields, where=where or None)
        rng.shuffle(rows)
        pooled.extend(rows[:cap])
    return split_holdout(pooled, fraction=dev_fraction, seed=seed)


def write_examples(path: Path, rows: Iterable[Example]) -> int:
    """Rows as JSONL in the shape `finpulse train` reads (text, lang, sentiment and/or topic); returns the count."""
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            record = {"text": row.text, "lang": row.lang, "sentiment": row.sentiment, "topic": row.topic}
            out.write(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n")
            n += 1
    return n


def baseline(split_dir: Path) -> dict[str, Any]:
    """Character n-gram TF-IDF + logistic regression per head, scored like `finpulse train`."""
    fields = Fields()
    train = load_examples([split_dir / "train.jsonl"], fields=fields)
    dev = load_examples([split_dir / "dev.jsonl"], fields=fields)
    heads = ("sentiment", "topic")
    gold = {head: [getattr(r, head) for r in dev] for head in heads}
    pred = {head: tfidf_predict(train, dev, head) for head in heads}
    return evaluate(gold, pred, [r.lang for r in dev])


def tfidf_predict(train: Sequence[Example], test: Sequence[Example], head: str) -> list[str]:
    """The baseline every model here is compared with: TF-IDF over character 2-4-grams + logistic
    regression, fitted on train's rows labelled for head, predicting every row of test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = [r for r in train if getattr(r, head) is not None]
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True, max_features=300_000),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced"),
    )
    model.fit([r.text for r in rows], [getattr(r, head) for r in rows])
    return list(model.predict([r.text for r in test]))


def compare(
    model_dir: Path,
    rows: Sequence[Example],
    backends: Sequence[str],
    *,
    threads: int,
    repeats: int,
    token_budget: int = 8192,
    max_length: int = 128,
) -> dict[str, Any]:
    """Speed and quality of each backend on the same held-out rows, in one process.

    backends are keys of engines.export.bench.VARIANTS or "onnxruntime:FILE" (another ONNX export in
    model_dir). Repeats go round-robin so that background load weighs on every backend alike;
    docs_per_s is from the median repeat, and spread (slowest / fastest repeat - 1) shows the
    noise. speedup and *_f1_change_points are against the first backend.
    """
    import statistics
    import time

    from engines.export.bench import make_variant

    texts = [r.text for r in rows]
    results: dict[str, Any] = {}
    engines = {
        name: make_variant(name, model_dir, max_length=max_length, token_budget=token_budget, threads=threads)
        for name in backends
    }
    for engine in engines.values():
        engine.predict(texts[:64])
    timings: dict[str, list[float]] = {name: [] for name in backends}
    predictions: dict[str, list[Any]] = {}
    for _ in range(repeats):  # round-robin, so background load weighs on every backend alike
        for name, engine in engines.items():
            start = time.perf_counter()
            predictions[name] = engine.predict(texts)
            timings[name].append(time.perf_counter() - start)
    heads = [h for h in ("sentiment", "topic") if any(getattr(r, h) for r in rows)]
    for name in backends:
        report = evaluate(
            {h: [getattr(r, h) for r in rows] for h in heads},
            {h: [getattr(p, h).label for p in predictions[name]] for h in heads},
            [r.lang for r in rows],
        )
        seconds = statistics.median(timings[name])
        results[name] = {
            "model_version": engines[name].model_version,
            "docs_per_s": len(texts) / seconds,
            "seconds": timings[name],
            "spread": max(timings[name]) / min(timings[name]) - 1,
            **{f"{h}_macro_f1": report[h]["all"]["macro_f1"] for h in heads},
            **{f"{h}_accuracy": report[h]["all"]["accuracy"] for h in heads},
        }
    first = results[backends[0]]
    for name, r in results.items():
        r["speedup"] = r["docs_per_s"] / first["docs_per_s"]
        for h in heads:
            r[f"{h}_f1_change_points"] = 100 * (r[f"{h}_macro_f1"] - first[f"{h}_macro_f1"])
            pairs = zip(predictions[name], predictions[backends[0]])
            r[f"{h}_labels_changed"] = sum(getattr(a, h).label != getattr(b, h).label for a, b in pairs)
    return results


def official_tests(model_dir: Path, data_dir: Path, split_dir: Path, *, backend: str = "torch") -> dict[str, Any]:
    """A model trained on a `split` beside TF-IDF on the same training rows, on the published test sets.

    xlmt_test: XLM-T's official test split (870 tweets per language; `split` keeps only XLM-T's
    train split). fpb_heldout: the Financial PhraseBank sentences of the split's held-out rows.
    multifin_heldout: the split's held-out MultiFin headlines (its topic rows).
    """
    from engines import load_engine

    engine = load_engine(model_dir, backend=backend)
    train = load_examples([split_dir / "train.jsonl"])
    dev = load_examples([split_dir / "dev.jsonl"])
    sentiment_only = Fields(sentiment="label", topic=None)
    fpb = {r.text for r in load_examples([data_dir / "fin_sentiment_en.jsonl"], fields=sentiment_only,
                                         where={"source": "fpb"})}
    sets = {
        "xlmt_test": (load_examples([data_dir / "xlmt_sentiment.jsonl"], fields=sentiment_only,
                                    where={"split": "test"}), "sentiment"),
        "fpb_heldout": ([r for r in dev if r.sentiment and r.text in fpb], "sentiment"),
        "multifin_heldout": ([r for r in dev if r.topic], "topic"),
    }
    results: dict[str, Any] = {"model_version": engine.model_version}
    for name, (rows, head) in sets.items():
        scores = engine.predict([r.text for r in rows])
        gold, langs = {head: [getattr(r, head) for r in rows]}, [r.lang for r in rows]
        results[name] = {
            "head": head,
            "model": evaluate(gold, {head: [getattr(s, head).label for s in scores]}, langs)[head],
            "tfidf": evaluate(gold, {head: tfidf_predict(train, rows, head)}, langs)[head],
        }
    return results


def plot_by_language(model_report: dict[str, Any], baseline_report: dict[str, Any], out: Path, *, min_n: int = 20) -> None:
    """Per-language macro-F1 of the model beside the baseline, one panel per head (languages with >= min_n rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = [h for h in ("sentiment", "topic") if h in model_report]
    fig, axes = plt.subplots(1, len(heads), figsize=(6 * len(heads), 3.8), squeeze=False)
    for ax, head in zip(axes[0], heads):
        langs = sorted(l for l, r in model_report[head]["by_lang"].items() if r["n"] >= min_n)
        xs = range(len(langs))
        model = [model_report[head]["by_lang"][l]["macro_f1"] for l in langs]
        base = [baseline_report[head]["by_lang"][l]["macro_f1"] for l in langs]
        ax.bar([x - 0.2 for x in xs], model, width=0.4, label="fine-tuned MiniLM-L6")
        ax.bar([x + 0.2 for x in xs], base, width=0.4, label="TF-IDF + LR")
        ax.set_xticks(list(xs), [f"{l}\n(n={model_report[head]['by_lang'][l]['n']})" for l in langs], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{head}: macro-F1 by language (held out)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engines.training.quality")
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write train.jsonl and dev.jsonl")
    split.add_argument("--data", type=Path, required=True, help="the shared data directory")
    split.add_argument("--out", type=Path, required=True)
    split.add_argument("--cap", type=int, default=4000, help="most rows per source")
    split.add_argument("--dev-fraction", type=float, default=0.15)
    split.add_argument("--seed", type=int, default=13)
    base = commands.add_parser("baseline", help="TF-IDF + logistic regression on a split")
    base.add_argument("--split", type=Path, required=True)
    base.add_argument("--out", type=Path, help="write the report as JSON")
    # Which rows of a data file, and which held-out share: the same options as `finpulse train`.
    rows = argparse.ArgumentParser(add_help=False)
    rows.add_argument("--data", type=Path, required=True, help="JSONL rows")
    rows.add_argument("--sentiment-field", default="sentiment")
    rows.add_argument("--topic-field", default="topic")
    rows.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE")
    rows.add_argument("--holdout-fraction", type=float, help="the held-out share `finpulse train` kept")
    rows.add_argument("--seed", type=int, default=42)
    comp = commands.add_parser("compare", parents=[rows], help="docs/s and macro-F1 of backends on held-out rows")
    comp.add_argument("--model", type=Path, required=True)
    comp.add_argument("--backends", default="torch,onnxruntime,onnxruntime-int8")
    comp.add_argument("--threads", type=int, default=2)
    comp.add_argument("--repeats", type=int, default=3)
    comp.add_argument("--token-budget", type=int, default=8192, help="padded tokens per batch, every backend")
    comp.add_argument("--out", type=Path)
    sample = commands.add_parser(
        "calibration", parents=[rows], help="texts for static int8 calibration, from the training side only"
    )
    sample.add_argument("-n", type=int, default=200)
    sample.add_argument("--out", type=Path, required=True)
    tests = commands.add_parser("tests", help="a model trained on a split, and TF-IDF, on the published test sets")
    tests.add_argument("--model", type=Path, required=True)
    tests.add_argument("--data", type=Path, required=True, help="the shared data directory")
    tests.add_argument("--split", type=Path, required=True, help="the `split` output the model was trained on")
    tests.add_argument("--backend", default="torch")
    tests.add_argument("--out", type=Path, required=True)
    fig = commands.add_parser("plot", help="per-language macro-F1 of a model's eval.json beside the baseline's")
    fig.add_argument("--model-eval", type=Path, required=True)
    fig.add_argument("--baseline", type=Path, required=True)
    fig.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "tests":
        results = official_tests(args.model, args.data, args.split, backend=args.backend)
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        for name, result in results.items():
            if isinstance(result, dict):
                print(f"{name} ({result['head']}): macro-F1 {result['model']['all']['macro_f1']:.4f}, accuracy "
                      f"{result['model']['all']['accuracy']:.4f}; TF-IDF {result['tfidf']['all']['macro_f1']:.4f}")
    elif args.command == "plot":
        load = lambda p: json.loads(p.read_text(encoding="utf-8"))  # noqa: E731
        plot_by_language(load(args.model_eval), load(args.baseline), args.out)
    elif args.command in ("compare", "calibration"):
        where: dict[str, list[str]] = {}
        for pair in args.where:
            key, _, value = pair.partition("=")
            where.setdefault(key, []).append(value)
        fields = Fields(sentiment=args.sentiment_field or None, topic=args.topic_field or None)
        rows = load_examples([args.data], fields=fields, where=where or None)
        if args.command == "calibration":
            if args.holdout_fraction:
                rows = split_holdout(rows, fraction=args.holdout_fraction, seed=args.seed)[0]
            picked = random.Random(args.seed).sample(rows, min(args.n, len(rows)))
            print(f"{write_examples(args.out, picked)} calibration rows (of {len(rows)}) -> {args.out}")
            return
        if args.holdout_fraction:
            rows = split_holdout(rows, fraction=args.holdout_fraction, seed=args.seed)[1]
        results = compare(
            args.model, rows, args.backends.split(","), threads=args.threads, repeats=args.repeats,
            token_budget=args.token_budget,
        )
        print(json.dumps(results, indent=2))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    elif args.command == "split":
        train, dev = build_split(args.data, cap=args.cap, dev_fraction=args.dev_fraction, seed=args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"train {write_examples(args.out / 'train.jsonl', train)} rows, dev {write_examples(args.out / 'dev.jsonl', dev)} rows")
    else:
        from rich.console import Console

        report = baseline(args.split)
        Console().print(render_report(report, title="TF-IDF + logistic regression"))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
