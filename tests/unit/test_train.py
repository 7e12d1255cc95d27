"""engines.training: data, evaluate and train on a tiny BERT and a synthetic, learnable set."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from engines import load_engine
from engines.modeling import IGNORE_INDEX, SentimentTopicOutput
from engines.training import train as train_module
from engines.training.checkpoints import CHECKPOINT_DIR, EVAL_FILE, STATE_FILE
from engines.training.data import Example, Fields, class_weights_of, encode, load_examples, pad_batch, split_holdout
from engines.training.evaluate import classification_report, evaluate, mean_macro_f1
from engines.training.tiny import DEFAULT_TOPICS, SPECIAL_TOKENS, build_tiny_checkpoint
from engines.training.train import train

# One keyword per class: a 1-layer, 32-wide BERT learns these in a few epochs.
SENTIMENT_WORDS = {"negative": "plunge", "neutral": "steady", "positive": "surge"}
TOPIC_WORDS = {"earnings": "profit", "m&a": "merger", "macro": "inflation"}
FILLERS = {
    "en": "Shares of the company today",
    "es": "Las acciones de la empresa hoy",
    "de": "Die Aktie des Unternehmens heute",
}
FAST = dict(batch_size=4, learning_rate=5e-3, max_length=32, warmup_ratio=0.1, seed=0)


def synthetic_rows(copies: int = 2) -> list[dict[str, Any]]:
    rows = [
        {"text": f"{filler} {s_word} {t_word}" if k % 2 else f"{t_word}: {filler} {s_word}",
         "lang": lang, "sentiment": sentiment, "topic": topic, "source": "synthetic"}
        for lang, filler in FILLERS.items()
        for sentiment, s_word in SENTIMENT_WORDS.items()
        for topic, t_word in TOPIC_WORDS.items()
        for k in range(copies)
    ]
    random.Random(0).shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def engine_topics(model_dir: Path) -> list[str]:
    """The topic label map as the worker sees it: through load_engine and a prediction."""
    [scores] = load_engine(model_dir).predict(["Shares of the company today"])
    return list(scores.topic.probs)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; more only spin-wait on a busy 2-core box (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finpulse-format tiny checkpoint (heads included, topics = DEFAULT_TOPICS)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A headless BertModel directory, like a sentence-transformers MiniLM or bert-base.

    Its word-level vocabulary is exactly the synthetic rows' words, in sorted order, so the numbers the
    training tests see are reproducible.
    """
    # One layer, no dropout: learns the keywords within a few epochs whatever the seed.
    return write_plain_bert(tmp_path_factory.mktemp("plain-bert"), layers=1)


def write_plain_bert(out: Path, *, layers: int) -> Path:
    """A headless 32-wide BERT (seeded, no dropout) whose vocabulary is the synthetic rows' words."""
    words = {w for r in synthetic_rows() for w in r["text"].replace(":", " : ").split()}
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate([*SPECIAL_TOKENS, *sorted(words)])},
                                  do_lower_case=False)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, initializer_range=0.1, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", synthetic_rows())


@pytest.fixture(scope="module")
def trained(plain_base: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Eight epochs from the headless base, dev = a 20 % held-out split of the training file."""
    out = tmp_path_factory.mktemp("trained")
    report = train(str(plain_base), [train_file], None, out, epochs=8, **FAST)
    return out, report


# ---------------------------------------------------------------- evaluate


def test_classification_report_hand_computed() -> None:
    gold = ["pos", "pos", "neg", "neg", "neu"]
    pred = ["pos", "neg", "neg", "neg", "pos"]
    r = classification_report(gold, pred, ["neg", "neu", "pos"])
    assert r["n"] == 5
    assert r["accuracy"] == pytest.approx(3 / 5)
    # neg: P 2/3 R 1 F1 0.8; neu: P 0 R 0 F1 0; pos: P 1/2 R 1/2 F1 0.5
    assert r["per_class"]["neg"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert r["per_class"]["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["pos"]["f1"] == pytest.approx(0.5)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.0 + 0.5) / 3)
    assert r["confusion"] == [[2, 0, 0], [0, 0, 1], [1, 0, 1]]


def test_macro_f1_skips_labels_absent_from_gold_and_pred() -> None:
    r = classification_report(["a", "a", "b"], ["a", "b", "b"], ["a", "b", "c"])
    # a: P 1 R 1/2 F1 2/3; b: P 1/2 R 1 F1 2/3; c never occurs -> not averaged in.
    assert r["macro_f1"] == pytest.approx(2 / 3)
    assert r["per_class"]["c"]["support"] == 0 and len(r["confusion"]) == 3


def test_evaluate_splits_by_head_and_language() -> None:
    gold = {"sentiment": ["positive", "negative", None, "neutral"], "topic": [None, None, None, None]}
    pred = {"sentiment": ["positive", "positive", "negative", "neutral"], "topic": ["a", "b", "a", "b"]}
    report = evaluate(gold, pred, ["en", "en", "de", "de"], {"sentiment": ["negative", "neutral", "positive"]})
    assert list(report) == ["sentiment"]  # no gold topic at all -> no topic section
    section = report["sentiment"]
    assert section["all"]["n"] == 3 and section["all"]["accuracy"] == pytest.approx(2 / 3)
    assert set(section["by_lang"]) == {"en", "de"}
    assert section["by_lang"]["en"]["accuracy"] == pytest.approx(0.5)
    assert section["by_lang"]["de"] == {**section["by_lang"]["de"], "n": 1, "accuracy": 1.0, "macro_f1": 1.0}
    assert section["by_lang"]["de"]["labels"] == ["negative", "neutral", "positive"]
    json.dumps(report)  # JSON-able as is
    assert mean_macro_f1(report) == section["all"]["macro_f1"]


# ---------------------------------------------------------------- data


def test_csv_with_renamed_fields_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "posts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["body", "language", "label", "category", "source"])
        writer.writeheader()
        writer.writerow({"body": "Stocks surge", "language": "en", "label": "Positive ", "category": "markets",
                         "source": "a"})
        writer.writerow({"body": "Aktien fallen", "language": "de", "label": "negative", "category": "",
                         "source": "a"})
        writer.writerow({"body": "no labels", "language": "en", "label": "", "category": "", "source": "a"})
        writer.writerow({"body": "other source", "language": "en", "label": "neutral", "category": "macro",
                         "source": "b"})
    fields = Fields(text="body", lang="language", sentiment="label", topic="category")
    assert load_examples([path], fields=fields, where={"source": "a"}) == [
        Example("Stocks surge", "en", "positive", "markets"),
        Example("Aktien fallen", "de", "negative", None),
    ]
    assert len(load_examples([path], fields=fields, where={"source": ["a", "b"]})) == 3
    sentiment_only = load_examples([path], fields=Fields(text="body", lang="language", sentiment="label", topic=None))
    assert [e.topic for e in sentiment_only] == [None, None, None]


def test_jsonl_topic_list_takes_first_and_bad_sentiment_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"text": "Tax news", "lang": "da", "topics": ["Tax", "VAT & Customs"]},
        {"text": "no topic", "lang": "da", "topics": []},
        {"text": "mixed", "lang": "ja", "label": "mixed"},
    ])
    topics_only = Fields(sentiment=None, topic="topics")
    assert load_examples([path], fields=topics_only) == [Example("Tax news", "da", None, "Tax")]
    with pytest.raises(ValueError, match=r"x.jsonl:3: sentiment 'mixed'"):
        load_examples([path], fields=Fields(sentiment="label", topic="topics"))
    assert load_examples([path], fields=Fields(sentiment="label"), where={"label": ["negative"]}) == []


def test_split_holdout_is_seeded_and_stratified() -> None:
    rows = [Example(f"t{i}", "en", "neutral" if i % 4 else "negative") for i in range(100)]
    train_a, held_a = split_holdout(rows, fraction=0.2, seed=1)
    train_b, held_b = split_holdout(rows, fraction=0.2, seed=1)
    _, held_c = split_holdout(rows, fraction=0.2, seed=2)
    assert (train_a, held_a) == (train_b, held_b) and held_a != held_c
    assert len(held_a) == 20 and set(held_a).isdisjoint(train_a) and len(train_a) + len(held_a) == 100
    assert sum(e.sentiment == "negative" for e in held_a) == 5  # 25 % of the held-out, as in the whole


def test_row_with_only_sentiment_gets_minus_100_topic(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = [Example("Stocks surge", "en", "positive", None), Example("Fed holds", "en", None, "macro")]
    encoded = encode(rows, tokenizer, max_length=8, sentiment_labels=["negative", "neutral", "positive"],
                     topic_labels=["earnings", "macro"])
    batch = pad_batch(encoded, pad_token_id=tokenizer.pad_token_id)
    assert batch["sentiment_labels"].tolist() == [2, IGNORE_INDEX]
    assert batch["topic_labels"].tolist() == [IGNORE_INDEX, 1]
    assert batch["row"].tolist() == [0, 1]
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in encoded) <= 8  # dynamic padding
    assert batch["attention_mask"].sum().item() == sum(len(r["input_ids"]) for r in encoded)


def test_loss_ignores_unlabelled_rows_and_skips_absent_heads() -> None:
    torch.manual_seed(0)
    out = SentimentTopicOutput(sentiment_logits=torch.randn(3, 3), topic_logits=torch.randn(3, 4, requires_grad=True))
    batch = {"sentiment_labels": torch.tensor([2, 0, IGNORE_INDEX]), "topic_labels": torch.full((3,), IGNORE_INDEX)}
    loss, parts = train_module._loss(out, batch, {})
    expected = torch.nn.functional.cross_entropy(out.sentiment_logits[:2], torch.tensor([2, 0]))
    assert loss.item() == pytest.approx(expected.item()) and "topic_loss" not in parts
    assert not loss.requires_grad  # the topic logits are not even in the graph
    weighted, _ = train_module._loss(out, batch, {"sentiment": torch.tensor([1.0, 1.0, 3.0])})
    ce = torch.nn.functional.cross_entropy(out.sentiment_logits[:2], torch.tensor([2, 0]), reduction="none")
    assert weighted.item() == pytest.approx(((3 * ce[0] + ce[1]) / 4).item())


def test_class_weights_are_inverse_frequency() -> None:
    rows = [Example("a", "en", "negative"), Example("b", "en", "neutral"), Example("c", "en", "neutral"),
            Example("d", "en", "positive", "macro")]
    weights = class_weights_of(rows, {"sentiment": ["negative", "neutral", "positive"],
                                                 "topic": ["macro"]}, torch.device("cpu"))
    assert weights["sentiment"].tolist() == pytest.approx([4 / 3, 2 / 3, 4 / 3])
    assert weights["topic"].tolist() == [1.0]


def test_mixed_precision_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_module._resolve_precision("auto") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert train_module._resolve_precision("auto") == "fp16"
    assert train_module._resolve_precision("bf16") == "bf16"


# ---------------------------------------------------------------- train


def test_training_loss_goes_down_and_dev_improves(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    state = read_json(out / CHECKPOINT_DIR / STATE_FILE)
    losses = [e["train_loss"] for e in state["epoch_log"]]
    assert len(losses) == 8 and state["global_step"] == 8 * 11  # 54 rows - 10 held out = 44, batch 4
    assert losses[-1] < 0.5 * losses[0], losses
    assert state["best_score"] > 0.7  # mean dev macro-F1 of the heads; chance is ~0.33


def test_saved_dir_loads_with_load_engine_and_predicts(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    engine = load_engine(out)
    assert engine_topics(out) == sorted(TOPIC_WORDS)  # sorted union of the training topics
    assert engine.model_version.startswith(f"{out.name}-")
    scores = engine.predict([f"{FILLERS['en']} surge profit", "Las acciones plunge merger"])
    assert len(scores) == 2
    assert all(abs(sum(s.sentiment.probs.values()) - 1) < 1e-5 for s in scores)


def test_eval_json_has_both_heads_per_language(trained: tuple[Path, dict]) -> None:
    out, report = trained
    assert read_json(out / EVAL_FILE) == report
    for head in ("sentiment", "topic"):
        assert set(report[head]["by_lang"]) == set(FILLERS)
        assert sum(m["n"] for m in report[head]["by_lang"].values()) == report[head]["all"]["n"] == 10
        assert report[head]["all"]["labels"] == (["negative", "neutral", "positive"] if head == "sentiment"
                                                 else sorted(TOPIC_WORDS))


def test_sentiment_only_rows_never_touch_the_topic_head(tiny_base: Path, tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "topic"} for r in synthetic_rows(copies=1)]
    path = write_jsonl(tmp_path / "sentiment.jsonl", rows)
    report = train(str(tiny_base), [path], None, tmp_path / "out", epochs=1, **FAST)
    assert list(report) == ["sentiment"]
    steps = read_json(tmp_path / "out" / CHECKPOINT_DIR / STATE_FILE)["step_log"]
    assert steps and all(s["topic_loss"] is None and s["sentiment_loss"] is not None for s in steps)
    before, after = load_file(tiny_base / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    # No data names a topic, so the base's topic labels and head stay exactly as they were...
    assert engine_topics(tmp_path / "out") == list(DEFAULT_TOPICS)
    assert torch.equal(before["topic_head.weight"], after["topic_head.weight"])
    assert torch.equal(before["topic_head.bias"], after["topic_head.bias"])
    # ...while the sentiment head and encoder did train.
    assert not torch.equal(before["sentiment_head.weight"], after["sentiment_head.weight"])


def test_resume_continues_where_a_crashed_run_stopped(
    tiny_base: Path, train_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiny_base has dropout, so the resumed run only matches if the RNG state came back too.
    # Dev rows come from the same file through dev_where; grad accumulation and class weights on.
    options = dict(FAST, epochs=3, grad_accum_steps=2, class_weights=True, where={"lang": ["en", "es"]},
                   dev_where={"lang": "de"})
    reference = train(str(tiny_base), [train_file], [train_file], tmp_path / "straight", **options)

    real_save = train_module.save_checkpoint

    def save_then_crash(*args: Any) -> None:
        real_save(*args)
        raise KeyboardInterrupt("simulated crash after epoch 1")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(str(tiny_base), [train_file], [train_file], tmp_path / "crashed", **options)
    # 36 en+es rows, batch 4: 9 micro-batches, 2 per update -> 5 updates per epoch.
    assert read_json(tmp_path / "crashed" / CHECKPOINT_DIR / STATE_FILE)["global_step"] == 5
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)

    resumed = train(str(tiny_base), [train_file], [train_file], tmp_path / "crashed", resume=True, **options)
    state = read_json(tmp_path / "crashed" / CHECKPOINT_DIR / STATE_FILE)
    straight = read_json(tmp_path / "straight" / CHECKPOINT_DIR / STATE_FILE)
    assert [s["step"] for s in state["step_log"]] == list(range(1, 16))
    assert [e["epoch"] for e in state["epoch_log"]] == [1, 2, 3]
    # Same weights, optimizer, scheduler, RNG and shuffles as the uninterrupted run: same numbers.
    assert [s["loss"] for s in state["step_log"]] == pytest.approx([s["loss"] for s in straight["step_log"]])
    assert [s["lr"] for s in state["step_log"]] == pytest.approx([s["lr"] for s in straight["step_log"]])
    assert resumed == reference
    assert set(resumed["sentiment"]["by_lang"]) == {"de"}
    final, expected = load_file(tmp_path / "crashed" / CHECKPOINT_DIR / "model.safetensors"), \
        load_file(tmp_path / "straight" / CHECKPOINT_DIR / "model.safetensors")
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)


def test_early_stopping_with_patience_from_csv(plain_base: Path, tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["body", "language", "label"])
        writer.writeheader()
        for r in synthetic_rows(copies=1):
            writer.writerow({"body": r["text"], "language": r["lang"], "label": r["sentiment"]})
    fields = Fields(text="body", lang="language", sentiment="label", topic=None)
    # lr 0: dev macro-F1 never beats epoch 1, so patience 2 stops after epoch 3 of 10.
    train(str(plain_base), [path], None, tmp_path / "out", fields=fields, epochs=10, patience=2,
          **dict(FAST, learning_rate=0.0))
    state = read_json(tmp_path / "out" / CHECKPOINT_DIR / STATE_FILE)
    assert [e["epoch"] for e in state["epoch_log"]] == [1, 2, 3]
    assert state["best_epoch"] == 1 and state["bad_epochs"] == 2
    assert engine_topics(tmp_path / "out") == list(train_module.FALLBACK_TOPICS)


# ---------------------------------------------------------------- frozen encoder, frozen embeddings


def test_frozen_encoder_trains_only_the_heads_and_reuses_its_cache(
    plain_base: Path, train_file: Path, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "frozen"
    options = dict(epochs=40, batch_size=8, learning_rate=1e-2, max_length=32, seed=0, freeze_encoder=True,
                   cache_dir=cache, head_hidden=16)
    report = train(str(plain_base), [train_file], None, out, **options)
    base, trained = load_file(plain_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(trained[f"bert.{name}"], tensor) for name, tensor in base.items())
    assert report["sentiment"]["all"]["macro_f1"] > 0.8 and report["topic"]["all"]["macro_f1"] > 0.8

    # The standardisation was folded into the heads: the served model reproduces the dev report.
    _, dev = split_holdout(load_examples([train_file]), fraction=0.2, seed=0)
    served = load_engine(out, backend="torch").predict([r.text for r in dev])
    again = evaluate({"sentiment": [r.sentiment for r in dev], "topic": [r.topic for r in dev]},
                     {"sentiment": [s.sentiment.label for s in served], "topic": [s.topic.label for s in served]},
                     [r.lang for r in dev])
    for head in ("sentiment", "topic"):
        assert again[head]["all"]["macro_f1"] == pytest.approx(report[head]["all"]["macro_f1"])

    # A second run with other settings embeds nothing new.
    [cache_file] = cache.glob("*.pt")
    written = cache_file.stat().st_mtime_ns
    train(str(plain_base), [train_file], None, tmp_path / "again", **{**options, "learning_rate": 5e-3})
    assert cache_file.stat().st_mtime_ns == written


def test_frozen_word_embeddings_stay_put_while_the_rest_learns(plain_base: Path, train_file: Path, tmp_path: Path) -> None:
    train(str(plain_base), [train_file], None, tmp_path, epochs=1, freeze_word_embeddings=True, **FAST)
    base, trained = load_file(plain_base / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    word = "embeddings.word_embeddings.weight"
    assert torch.equal(trained[f"bert.{word}"], base[word])
    assert not torch.equal(trained["bert.encoder.layer.0.attention.self.query.weight"],
                           base["encoder.layer.0.attention.self.query.weight"])


def test_pooled_cache_keeps_one_row_per_key_across_runs(tmp_path: Path) -> None:
    from engines.training.frozen import PooledCache

    cache = PooledCache(tmp_path, "k")
    texts = ["up", "down", "a\ud800", "a\udfff", "up"]  # the two lone-surrogate texts share one key
    missing = cache.missing(texts)
    assert missing == ["up", "down", "a\udfff"]
    cache.add(missing, torch.arange(3.0).unsqueeze(1))
    reopened = PooledCache(tmp_path, "k")
    assert reopened.missing([*texts, "flat"]) == ["flat"]
    reopened.add(["flat"], torch.tensor([[9.0]]))
    assert reopened.get(["flat", "up", "a\ud800", "down"]).squeeze(1).tolist() == [9.0, 0.0, 2.0, 1.0]
