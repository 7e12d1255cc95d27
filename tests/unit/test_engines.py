"""engines: the two-head model itself, load_engine's choices and errors, and model_version on the tiny checkpoint.

What every backend must do with texts (scores, batching, order, edge cases) is in test_backend_contract.py.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from engines import SENTIMENT_LABELS, load_engine
from engines.modeling import BertForSentimentAndTopic, configure_heads
from engines.serving import loader
from engines.training.tiny import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mbert"))


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


def test_budget_batches_bound_tokens_rows_and_padding() -> None:
    from engines.serving.batching import budget_batches

    lengths = [3, 4, 4, 10, 11, 30]
    rows = [[0] * n for n in lengths]
    order = list(range(len(rows)))
    assert list(budget_batches(order, rows, token_budget=1000)) == [order]
    assert list(budget_batches(order, rows, token_budget=40)) == [[0, 1, 2, 3], [4], [5]]
    assert list(budget_batches(order, rows, token_budget=1000, max_rows=2)) == [[0, 1], [2, 3], [4, 5]]
    # 3,4,4 pad to 12 for 11 real tokens; adding 10 would pad to 40 for 21: cut. 10,11 pad to 22 for 21.
    assert list(budget_batches(order, rows, token_budget=1000, max_padding=1.25)) == [[0, 1, 2], [3, 4], [5]]
    assert list(budget_batches(order, rows, token_budget=1000, max_padding=100)) == [order]


def test_max_length_must_fit_token_budget(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="token_budget"):
        load_engine(tiny_dir, max_length=256, token_budget=128)


# Long texts: scored over chunks (engines/serving/batching.py).
ARTICLE = " ".join(f"Paragraph {n}: the company reported revenue of {n * 7} million and guided higher." for n in range(300))


def _probe_run(topics: int):
    """Logits that depend on every token of a row, so each window scores differently."""
    import numpy as np

    def run(input_ids, attention_mask):
        signal = (input_ids * attention_mask).sum(axis=1, keepdims=True) % 97 / 97.0
        return np.hstack([signal, -signal, signal * 0]), np.hstack([signal * k for k in range(topics)])

    return run


def _batcher(tiny_dir: Path, *, max_chunks: int, prefix: str = "", max_length: int = 32):
    from engines.serving.batching import Batcher

    batcher = Batcher.for_checkpoint(tiny_dir, max_length=max_length, token_budget=512, max_chunks=max_chunks)
    batcher.prefix = prefix
    return batcher


def test_short_texts_score_the_same_with_chunking(tiny_dir: Path) -> None:
    texts = ["Shares rose 2% after results.", "Die Aktie fiel.", "x"]
    single = load_engine(tiny_dir, "torch", max_length=32, max_chunks=1).predict(texts)
    chunked = load_engine(tiny_dir, "torch", max_length=32, max_chunks=8).predict(texts)
    assert single == chunked


@pytest.mark.parametrize("prefix", ["", "query: "])
def test_long_text_windows_cover_the_article_within_the_bound(tiny_dir: Path, prefix: str) -> None:
    batcher = _batcher(tiny_dir, max_chunks=5, prefix=prefix)
    windows, owners, weights = batcher.windows(["short one", ARTICLE])
    assert owners == [0] + [1] * 5 and weights[0] == 1.0 and sum(weights[1:]) == pytest.approx(1.0)
    assert all(len(w) <= batcher.max_length for w in windows)
    assert windows[1] == batcher.encode([ARTICLE])[0]  # the first window is the unchunked encoding
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_dir)  # the serving tokenizer must agree with it
    prefix_ids = reference(prefix.strip(), add_special_tokens=False)["input_ids"] if prefix else []
    head = [reference.cls_token_id, *prefix_ids]  # every window: [CLS] + the prefix's tokens
    assert all(w[: len(head)] == head for w in windows[1:])
    text = [reference.decode(w, skip_special_tokens=True) for w in windows[1:]]
    assert "Paragraph 0 " in text[0]
    body = reference(ARTICLE, add_special_tokens=False)["input_ids"]
    assert windows[-1][-3:-1] == body[-2:]  # the last chunk ends where the article ends
    assert len(batcher.encode([ARTICLE])[0]) == batcher.max_length


def test_long_text_scores_are_the_token_weighted_mean_of_its_windows(tiny_dir: Path) -> None:
    import numpy as np

    batcher = _batcher(tiny_dir, max_chunks=4)
    probe = _probe_run(len(batcher.topic_labels))
    [scores] = batcher.predict([ARTICLE], probe)
    windows, _, weights = batcher.windows([ARTICLE])

    def softmax(logits):
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()

    alone = [probe(*batcher.pad([w])) for w in windows]  # each window scored on its own
    assert len({round(float(s[0][0, 0]), 9) for s in alone}) > 1  # the windows differ
    for n, (head, labels) in enumerate((("sentiment", batcher.sentiment_labels), ("topic", batcher.topic_labels))):
        mean = sum(weight * softmax(logits[n][0].astype(np.float64)) for weight, logits in zip(weights, alone))
        assert getattr(scores, head).probs == pytest.approx(dict(zip(labels, mean.tolist())), abs=1e-12)
        assert sum(getattr(scores, head).probs.values()) == pytest.approx(1.0, abs=1e-9)
    assert scores.sentiment.label == max(scores.sentiment.probs, key=scores.sentiment.probs.get)


def test_max_chunks_must_be_positive(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_chunks"):
        _batcher(tiny_dir, max_chunks=0)


def test_serving_tokenizer_gives_the_transformers_ids(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    from engines.serving.batching import encode_texts
    from engines.serving.tokenizer import ServingTokenizer

    reference, serving = AutoTokenizer.from_pretrained(tiny_dir), ServingTokenizer.from_dir(tiny_dir)
    assert serving is not None and serving.pad_token_id == reference.pad_token_id
    texts = ["", " ", "Shares rose 2% after results.", "Ünïcödé ẞ ﬁ ～ $TSLA", "a\u200bb", "\ud800 lone", ARTICLE]
    for max_length in (8, 32, 512):
        for prefix in ("", "query: "):
            assert encode_texts(serving, texts, max_length=max_length, prefix=prefix) == encode_texts(
                reference, texts, max_length=max_length, prefix=prefix
            )
    options = {"add_special_tokens": False, "return_offsets_mapping": True}
    expected = reference(["query: " + ARTICLE[:500]], **options)
    found = serving(["query: " + ARTICLE[:500]], **options)
    assert found["input_ids"] == expected["input_ids"]
    assert [list(map(tuple, row)) for row in found["offset_mapping"]] == [list(map(tuple, row)) for row in expected["offset_mapping"]]
