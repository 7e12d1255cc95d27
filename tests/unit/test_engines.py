"""engines: tiny offline checkpoint -> load_engine -> predict, plus the two-head model itself."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from engines import SENTIMENT_LABELS, Scores, load_engine
from engines.modeling import BertForSentimentAndTopic, configure_heads
from engines.serving import loader
from engines.training.tiny import build_tiny_checkpoint

from .texts import EDGE_CASES, MULTILINGUAL
from .texts import assert_valid as assert_valid_distributions



@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mbert"))


@pytest.fixture(scope="module")
def engine(tiny_dir: Path):
    return load_engine(tiny_dir)


def assert_valid(scores: Scores) -> None:
    assert_valid_distributions(scores)
    probs = scores.sentiment.probs
    assert scores.sentiment_score == pytest.approx(probs["positive"] - probs["negative"])


def probs_close(a: Scores, b: Scores, tol: float = 1e-4) -> bool:
    pairs = ((a.sentiment, b.sentiment), (a.topic, b.topic))
    return all(
        x.label == y.label and all(abs(x.probs[k] - y.probs[k]) <= tol for k in x.probs) for x, y in pairs
    )


def test_predict_seven_languages(engine) -> None:
    assert engine.backend == "torch"
    results = engine.predict(list(MULTILINGUAL.values()))
    assert len(results) == len(MULTILINGUAL)
    for scores in results:
        assert_valid(scores)
    # The tiny model is random but input-sensitive; without this the consistency tests below
    # could pass on a model that ignores its input.
    assert len({round(s.sentiment_score, 4) for s in results}) == len(MULTILINGUAL)


def test_batch_matches_single_and_keeps_order(tiny_dir: Path) -> None:
    # A small budget forces several batches of different padded widths.
    small = load_engine(tiny_dir, max_length=32, token_budget=64)
    texts = [*MULTILINGUAL.values(), "", "Ibex", "Nvidia unveiled a new AI chip " * 10]
    batched = small.predict(texts)
    singles = [small.predict([t])[0] for t in texts]
    for text, b, s in zip(texts, batched, singles):
        assert probs_close(b, s), text
    assert [probs_close(a, b) for a, b in zip(small.predict(texts[::-1]), batched[::-1])] == [True] * len(texts)


def test_batches_respect_token_budget(tiny_dir: Path) -> None:
    small = load_engine(tiny_dir, max_length=32, token_budget=64)
    shapes: list[torch.Size] = []
    small.model.register_forward_hook(lambda m, args, kwargs, out: shapes.append(kwargs["input_ids"].shape),
                                      with_kwargs=True)
    texts = [*MULTILINGUAL.values()] * 3 + ["a", "b", "c"]
    small.predict(texts)
    assert len(shapes) > 1
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert all(rows * width <= 64 and width <= 32 for rows, width in shapes)


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_return_defined_scores(engine, case: str) -> None:
    [scores] = engine.predict([EDGE_CASES[case]])
    assert_valid(scores)


def test_long_text_is_truncated_not_rejected(engine) -> None:
    big = EDGE_CASES["one_megabyte"]
    [whole] = engine.predict([big])
    [prefix] = engine.predict([big[:2000]])  # already far beyond 128 tokens
    assert probs_close(whole, prefix, tol=1e-6)


def test_empty_input_returns_empty_list(engine) -> None:
    assert engine.predict([]) == []


def test_model_version_tracks_weights(tiny_dir: Path, tmp_path: Path) -> None:
    first, second = load_engine(tiny_dir), load_engine(tiny_dir)
    digest = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert first.model_version == second.model_version == f"tiny-mbert-{digest[:12]}"

    other = build_tiny_checkpoint(tmp_path / "reseeded", seed=1)
    other_version = load_engine(other).model_version
    assert re.fullmatch(r"tiny-mbert-[0-9a-f]{12}", other_version)
    assert other_version != first.model_version


def tiny_model(topics: tuple[str, ...] = ("a", "b", "c", "d")) -> BertForSentimentAndTopic:
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, initializer_range=0.5)
    torch.manual_seed(0)
    return BertForSentimentAndTopic(configure_heads(config, topic_labels=topics, name="unit")).eval()


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = BertForSentimentAndTopic.from_pretrained(tmp_path)
    assert loaded.config.architectures == ["BertForSentimentAndTopic"]
    assert loaded.config.finpulse_model_name == "unit"
    assert loaded.config.sentiment_labels == list(SENTIMENT_LABELS)
    assert loaded.config.topic_labels == ["a", "b", "c", "d"]
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)

    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = model(ids, mask), loaded(ids, mask)
    # Identical weights; kernels on the reloaded (mmapped) tensors may differ in the last ulp.
    torch.testing.assert_close(a.sentiment_logits, b.sentiment_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.topic_logits, b.topic_logits, rtol=0, atol=1e-6)
    assert a.sentiment_logits.shape == (1, 3) and a.topic_logits.shape == (1, 4)


def test_forward_loss_ignores_minus_100() -> None:
    model = tiny_model()
    ids = torch.tensor([[2, 10, 11, 3], [2, 20, 21, 3]])
    mask = torch.ones_like(ids)
    assert model(ids, mask).loss is None

    out = model(ids, mask, sentiment_labels=torch.tensor([2, 0]), topic_labels=torch.tensor([1, 3]))
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert torch.isfinite(model.topic_head.weight.grad).all()

    # Row 1's topic label is ignored: the topic loss is row 0's alone.
    partial = model(ids, mask, topic_labels=torch.tensor([1, -100])).loss
    row0 = torch.nn.functional.cross_entropy(model(ids[:1], mask[:1]).topic_logits, torch.tensor([1]))
    assert partial.item() == pytest.approx(row0.item(), rel=1e-5)

    # A head whose labels are all ignored adds nothing (not NaN).
    sentiment_only = model(ids, mask, sentiment_labels=torch.tensor([2, 0])).loss
    both = model(ids, mask, sentiment_labels=torch.tensor([2, 0]), topic_labels=torch.tensor([-100, -100])).loss
    assert torch.isfinite(both) and both.item() == pytest.approx(sentiment_only.item())


def test_model_requires_topic_labels() -> None:
    with pytest.raises(ValueError, match="topic_labels"):
        BertForSentimentAndTopic(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32))


def test_unknown_backend_is_a_clear_error(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'tpu-magic' is unknown; available backends: \['torch'\]"):
        load_engine(tiny_dir, backend="tpu-magic")


def test_registered_but_missing_backend_is_a_clear_error(tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(loader._BACKENDS, "onnxruntime", ("finpulse_no_such_module", lambda *a, **k: None))
    with pytest.raises(ValueError, match=r"'onnxruntime' is not installed; available backends: \['torch'\]"):
        load_engine(tiny_dir, backend="onnxruntime")


def test_max_length_must_fit_token_budget(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="token_budget"):
        load_engine(tiny_dir, max_length=256, token_budget=128)
