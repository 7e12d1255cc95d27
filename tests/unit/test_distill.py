"""engines.training.distill: a shallower student learns a trained teacher's answers from unlabelled text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engines import load_engine
from engines.modeling import BertForSentimentAndTopic
from engines.training.data import Example, load_texts
from engines.training.distill import REPORT_FILE, DistillSettings, distill, kept_layers, make_student
from engines.training.tiny import build_tiny_checkpoint
from engines.training.train import train
from tests.unit.test_train import FAST, FILLERS, SENTIMENT_WORDS, TOPIC_WORDS, synthetic_rows, write_jsonl, write_plain_bert
from worker.entrypoints.cli import cli


def test_kept_layers_are_evenly_spaced_and_end_with_the_last() -> None:
    assert kept_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert kept_layers(12, 4) == [2, 5, 8, 11]
    assert kept_layers(12, 8) == [1, 2, 4, 5, 7, 8, 10, 11]
    assert kept_layers(12, 12) == list(range(12))
    assert kept_layers(3, 1) == [2]
    for bad in (0, 13):
        with pytest.raises(ValueError, match="1 to 12 layers"):
            kept_layers(12, bad)


def test_a_student_starts_from_the_teachers_kept_layers(tmp_path: Path) -> None:
    teacher = BertForSentimentAndTopic.from_pretrained(build_tiny_checkpoint(tmp_path / "tiny")).eval()
    assert teacher.config.num_hidden_layers == 2
    ids = torch.tensor([[0, 5, 9, 2], [0, 7, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])

    whole = make_student(teacher, 2).eval()
    with torch.no_grad():
        assert torch.equal(whole(ids, mask).sentiment_logits, teacher(ids, mask).sentiment_logits)

    one = make_student(teacher, 1)
    assert one.config.num_hidden_layers == 1
    assert one.config.finpulse_distilled_from["layers"] == [1]
    for (name, got), (_, want) in zip(one.bert.encoder.layer[0].state_dict().items(),
                                      teacher.bert.encoder.layer[1].state_dict().items()):
        assert torch.equal(got, want), name
    assert torch.equal(one.topic_head.weight, teacher.topic_head.weight)


def stream_texts() -> list[str]:
    """Unlabelled text in the teacher's vocabulary: the keywords in other orders than it was trained on."""
    orders = ("{f} {s} {t}", "{t}: {f} {s}", "{s} {t} {f}", "{f} {t} {s}", "{t} {s} : {f}", "{s} : {f}", "{t} {f}")
    return [order.format(f=f, s=s, t=tw) for f in FILLERS.values() for s in SENTIMENT_WORDS.values()
            for tw in TOPIC_WORDS.values() for order in orders]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT fine-tuned on the keyword task until it answers it."""
    base = write_plain_bert(tmp_path_factory.mktemp("base"), layers=3)
    train_file = write_jsonl(base / "train.jsonl", synthetic_rows())
    out = tmp_path_factory.mktemp("teacher")
    report = train(str(base), [train_file], None, out, epochs=10, **FAST)
    assert report["sentiment"]["all"]["macro_f1"] > 0.9, "the teacher must know the task for the test to mean much"
    return out


def test_the_student_learns_the_teachers_answers_without_labels(teacher_dir: Path, tmp_path: Path) -> None:
    rows = synthetic_rows()
    unlabelled = write_jsonl(tmp_path / "stream.jsonl", [{"text": text} for text in stream_texts()])
    labelled = [Example(r["text"], r["lang"], sentiment=r["sentiment"], topic=r["topic"]) for r in synthetic_rows()]
    out = tmp_path / "student"
    settings = DistillSettings(layers=1, epochs=10, learning_rate=3e-3, token_budget=64, max_length=32,
                               dev_fraction=0.2, seed=0)

    report = distill(teacher_dir, load_texts([unlabelled]), out, settings, tests={"synthetic": labelled},
                     cache_dir=tmp_path / "cache")

    assert report == json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["kept_layers"] == [2]
    before, best = report["epochs"][0], report["epochs"][report["best_epoch"]]
    assert best["vector_cosine"] > before["vector_cosine"]
    assert best["sentiment_agreement"] >= 0.95 and best["topic_agreement"] >= 0.95
    assert best["topic_agreement"] > before["topic_agreement"] + 0.2  # the kept layer alone does not know it yet
    synthetic = report["tests"]["synthetic"]
    assert synthetic["student"]["sentiment"]["all"]["macro_f1"] >= synthetic["teacher"]["sentiment"]["all"]["macro_f1"] - 0.05

    # The student is an ordinary checkpoint: the serving engine loads it and it answers as the teacher does.
    texts = [r["text"] for r in rows[:24]]
    teacher_scores = load_engine(str(teacher_dir), backend="torch").predict(texts)
    student = load_engine(str(out), backend="torch")
    agree = [a.sentiment.label == b.sentiment.label for a, b in zip(teacher_scores, student.predict(texts))]
    assert sum(agree) >= 0.9 * len(texts)
    saved = BertForSentimentAndTopic.from_pretrained(out)
    assert saved.config.num_hidden_layers == 1
    teacher = BertForSentimentAndTopic.from_pretrained(teacher_dir)
    assert torch.equal(saved.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


def test_a_student_deeper_than_its_teacher_is_refused_before_any_work(teacher_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 to 3 layers"):
        distill(teacher_dir, ["a", "b"], tmp_path / "out", DistillSettings(layers=4), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="at least 1 epoch"):
        distill(teacher_dir, ["a", "b"], tmp_path / "out", DistillSettings(layers=1, epochs=0), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_the_command_names_a_bad_layer_count_without_a_traceback(teacher_dir: Path, tmp_path: Path) -> None:
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": text} for text in stream_texts()])
    result = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher_dir), "--data", str(texts),
                                      "--out", str(tmp_path / "out"), "--layers", "5"])
    assert result.exit_code == 2, result.output
    assert "1 to 3 layers" in result.output and "Traceback" not in result.output
