"""One contract for every inference backend: each present on this machine is held to the same checks
on the same deterministic tiny checkpoint (engines.training.tiny, seed 0).

- Scores match stored expectations (data/backend_contract.json: both heads' probabilities for 12
  texts in seven scripts, with emoji, an empty and an over-long text), and model_version is the
  stored one plus the variant's suffix.
- A batch gives each text the scores it gets alone, in input order; [] gives [].
- health() passes, and fails on a backend whose forward pass gives NaN.
- max_batch_size is reported and no forward pass exceeds it or the token budget.
- Edge-case inputs give well-formed distributions; a long text is truncated, not rejected.

Tolerances (absolute, on probabilities):
- fp32 backends (torch, onnxruntime fp32): FP32_ATOL = 1e-4 against the stored values. The export
  gate (engines.export.onnx_export.EXPORT_ATOL) already bounds ORT-vs-torch logits by 1e-4 and
  probabilities move less than logits; CPU kernels that only reorder sums (other ISA, thread
  count, padding width) stay near 1e-6. Labels must be identical: the stored top two
  probabilities of every head are more than 10 x FP32_ATOL apart (checked below). A text's
  batched and single scores must agree within BATCH_ATOL = 1e-5.
- TensorRT fp32 (GPU kernels, TF32 off): TENSORRT_FP32_ATOL = 1e-3, what the TensorRT test in
  test_export.py has always allowed; 1e-4 between its batched and single scores.
- onnxruntime int8 (dynamic): no per-value bound is meaningful on the tiny model, whose weights
  are 25x BERT's scale, and dynamic int8 quantises activations per call, so a text's scores also
  depend on the batch it is in. Instead, per head, the mean |difference| must stay within
  INT8_MEAN_ATOL = 0.06 and at least INT8_MIN_AGREEMENT = 2/3 of the labels must agree, both
  against the stored fp32 values and between batched and single scores. Measured on an AVX2 CPU:
  against the stored values, mean 0.014 (sentiment) and 0.015 (topic), largest 0.13, labels 12/12
  and 10/12 (the topic misses are near ties); batched against single, mean 0.011-0.012, largest
  0.13, labels 14/14 and 13-14/14. Chance agreement is 1/3 and 1/8, and rows scored in the wrong
  order fail the order check, which every backend passes the same way: each batched result is
  nearest to its own text's single-text result.

Regenerate the expectations (after a deliberate change to the tiny checkpoint or to what a
backend computes, never to make a failing backend pass), from the repository root:

    ~/.cache/finpulse/venv/bin/python -m tests.unit.test_backend_contract --regenerate

They are computed with the torch backend, the reference the exports are checked against.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engines import HeadPrediction, Scores
from engines.serving.backends.onnxruntime_engine import OnnxEngine
from engines.serving.backends.torch_engine import TorchEngine
from engines.serving.base import BatchedEngine
from engines.training.tiny import build_tiny_checkpoint

from .texts import EDGE_CASES, assert_valid

EXPECTATIONS = Path(__file__).parent / "data" / "backend_contract.json"
REGENERATE = "python -m tests.unit.test_backend_contract --regenerate"
SEED = 0
MAX_LENGTH = 128
TEXTS = (
    "Apple beat revenue estimates and raised its dividend.",
    "Las acciones de Telefónica cayeron un 3% tras los resultados.",
    "Die Europäische Zentralbank senkt den Leitzins.",
    "腾讯第三季度净利润同比增长，股价上涨。",
    "日経平均株価は大幅に反発した。",
    "삼성전자의 영업이익이 시장 예상을 웃돌았다.",
    "ارتفعت أسعار النفط بعد قرار أوبك خفض الإنتاج.",
    "Центробанк повысил ключевую ставку до 16%.",
    "सेंसेक्स 500 अंक गिरकर बंद हुआ।",
    "Tesla 腾讯 Сбербанк ارتفعت 株価 📈 삼성 +12%",
    "",
    "Shares of Tesla fell 7% after the company missed delivery targets. " * 20,  # beyond MAX_LENGTH tokens
)
HEADS = ("sentiment", "topic")
VERSION_RE = r"tiny-mbert-[0-9a-f]{12}"

FP32_ATOL = 1e-4
TENSORRT_FP32_ATOL = 1e-3
INT8_MEAN_ATOL = 0.06
INT8_MIN_AGREEMENT = 2 / 3  # share of labels, per head
BATCH_ATOL = 1e-5


@dataclass(frozen=True)
class Backend:
    """How to make one backend variant and what it must match."""

    make: Callable[..., BatchedEngine]  # (model_dir, *, max_length, token_budget, threads, max_rows) -> engine
    version_suffix: str
    atol: float | None  # per-probability bound against the expectations; None: int8 (mean and agreement)
    batch_atol: float | None  # the same between batched and single-text scores
    needs: str | None = None  # why it cannot run here, None when it can


def _tensorrt(model_dir: Path, *, max_rows: int | None = None, **options: object) -> BatchedEngine:
    from engines.serving.backends.tensorrt_engine import TensorRTEngine
    from engines.serving.backends.tensorrt_plan import DEFAULT_BATCH

    top = max_rows or DEFAULT_BATCH[2]
    batch = (1, max(1, min(DEFAULT_BATCH[1], top // 2)), top)
    return TensorRTEngine(model_dir, fp16=False, batch=batch, cache_dir=model_dir / "tensorrt-contract", **options)


def _why_no_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT backend skipped: the tensorrt package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT backend skipped: no CUDA GPU is visible"
    return None


BACKENDS: dict[str, Backend] = {
    "torch": Backend(lambda d, **o: TorchEngine(d, **o), "", FP32_ATOL, BATCH_ATOL),
    "onnxruntime-fp32": Backend(lambda d, **o: OnnxEngine(d, quantized=False, **o), "", FP32_ATOL, BATCH_ATOL),
    "onnxruntime-int8": Backend(lambda d, **o: OnnxEngine(d, quantized=True, **o), "-int8", None, None),
    "tensorrt-fp32": Backend(_tensorrt, "", TENSORRT_FP32_ATOL, 1e-4, needs=_why_no_tensorrt()),
}


def backend_params() -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.skipif(spec.needs is not None, reason=spec.needs or ""), id=name)
        for name, spec in BACKENDS.items()
    ]


def load_expectations() -> dict:
    return json.loads(EXPECTATIONS.read_text(encoding="utf-8"))


def prepare_checkpoint(directory: Path) -> Path:
    """The tiny checkpoint with model.onnx and model.int8.onnx beside it."""
    from engines.export.int8 import quantize_int8
    from engines.export.onnx_export import export_onnx

    model_dir = build_tiny_checkpoint(directory, seed=SEED)
    quantize_int8(export_onnx(model_dir))
    return model_dir


def as_record(text: str, scores: Scores) -> dict[str, object]:
    return {"text": text, **{head: dict(getattr(scores, head).probs) for head in HEADS}}


def regenerate(path: Path = EXPECTATIONS) -> dict:
    """Score TEXTS with the torch backend on a fresh tiny checkpoint and write them to path."""
    import tokenizers
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        engine = TorchEngine(build_tiny_checkpoint(Path(tmp) / "tiny", seed=SEED), max_length=MAX_LENGTH)
        results = engine.predict(list(TEXTS))
        expectations = {
            "generated_by": REGENERATE,
            "reference_backend": engine.backend,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__},
            "checkpoint": {"builder": "engines.training.tiny.build_tiny_checkpoint", "seed": SEED,
                           "model_version": engine.model_version},
            "max_length": MAX_LENGTH,
            "texts": [as_record(text, scores) for text, scores in zip(TEXTS, results)],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expectations, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return expectations


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def torch_threads() -> Iterator[None]:
    """The engines run with threads=1 (a busy 2-core box); TorchEngine sets that process-wide, so restore it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def expectations() -> dict:
    return load_expectations()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_checkpoint(tmp_path_factory.mktemp("contract"))


@pytest.fixture(scope="module")
def engines_cache() -> dict[tuple[str, tuple[tuple[str, object], ...]], BatchedEngine]:
    return {}


@pytest.fixture
def make(model_dir: Path, engines_cache: dict) -> Callable[..., BatchedEngine]:
    """make(name, **options): the backend's engine on the tiny checkpoint, reused within the module."""

    def factory(name: str, **options: object) -> BatchedEngine:
        key = (name, tuple(sorted(options.items())))
        if key not in engines_cache:
            engines_cache[key] = BACKENDS[name].make(model_dir, threads=1, **options)
        return engines_cache[key]

    return factory


def probs(scores: Scores, head: str) -> np.ndarray:
    return np.array(list(getattr(scores, head).probs.values()))


def max_diff(a: list[Scores], b: list[Scores]) -> float:
    return max((float(np.abs(probs(x, h) - probs(y, h)).max()) for x, y in zip(a, b) for h in HEADS), default=0.0)


def assert_close(got: list[Scores], want: list[Scores], atol: float | None) -> None:
    """Per head: every probability within atol and the same labels; or, for atol None (int8), the mean
    |difference| within INT8_MEAN_ATOL and at least INT8_MIN_AGREEMENT of the labels the same."""
    assert len(got) == len(want)
    for head in HEADS:
        assert [list(getattr(s, head).probs) for s in got] == [list(getattr(s, head).probs) for s in want]
        diff = np.abs(np.array([probs(s, head) for s in got]) - np.array([probs(s, head) for s in want]))
        agree = sum(getattr(a, head).label == getattr(b, head).label for a, b in zip(got, want)) / len(got)
        if atol is not None:
            assert diff.max() <= atol, f"{head}: max |p - expected| {diff.max():.3g} > {atol:g}"
            assert agree == 1, f"{head}: labels differ"
        else:
            assert diff.mean() <= INT8_MEAN_ATOL, f"{head}: mean |p - expected| {diff.mean():.3g} > {INT8_MEAN_ATOL:g}"
            assert agree >= INT8_MIN_AGREEMENT, f"{head}: only {agree:.0%} of labels agree"


def stored_scores(expectations: dict) -> list[Scores]:
    return [
        Scores(*(HeadPrediction(max(r[head], key=r[head].get), r[head]) for head in HEADS))
        for r in expectations["texts"]
    ]


# ------------------------------------------------------------------------------------------ the checkpoint


def test_expectations_are_usable(expectations: dict) -> None:
    """The stored file fits TEXTS, is input-sensitive and has no near ties that tolerance could flip."""
    records = expectations["texts"]
    assert [r["text"] for r in records] == list(TEXTS), f"TEXTS changed: run {REGENERATE}"
    assert expectations["max_length"] == MAX_LENGTH
    for record in records:
        for head in HEADS:
            top, second = sorted(record[head].values(), reverse=True)[:2]
            assert top - second > 10 * FP32_ATOL, (record["text"], head)
    # A random model that ignored its input would give every text the same scores.
    assert len({round(r["sentiment"]["positive"], 4) for r in records}) == len(records)


def test_tiny_checkpoint_is_deterministic(tmp_path: Path, model_dir: Path, expectations: dict) -> None:
    """Byte-identical in this process and the weights the expectations were stored for (same model_version)."""
    again = build_tiny_checkpoint(tmp_path / "again", seed=SEED)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    assert TorchEngine(again).model_version == expectations["checkpoint"]["model_version"], (
        f"the tiny checkpoint is not the one the expectations were made for; if that is deliberate, run {REGENERATE}"
    )


# ------------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("name", backend_params())
def test_scores_match_stored_expectations(name: str, make, expectations: dict) -> None:
    got = make(name).predict(list(TEXTS))
    for scores in got:
        assert_valid(scores)
        sentiment = scores.sentiment.probs
        assert scores.sentiment_score == pytest.approx(sentiment["positive"] - sentiment["negative"])
    assert_close(got, stored_scores(expectations), BACKENDS[name].atol)


@pytest.mark.parametrize("name", backend_params())
def test_model_version(name: str, make, expectations: dict) -> None:
    engine = make(name)
    assert re.fullmatch(VERSION_RE + re.escape(BACKENDS[name].version_suffix), engine.model_version)
    assert engine.model_version == expectations["checkpoint"]["model_version"] + BACKENDS[name].version_suffix


@pytest.mark.parametrize("name", backend_params())
def test_batch_equals_single_in_input_order(name: str, make) -> None:
    # A small budget cuts the texts into several batches of different padded widths.
    engine = make(name, max_length=32, token_budget=64)
    texts = [*TEXTS, "Ibex", "a"]
    batched = engine.predict(texts)
    singles = [engine.predict([text])[0] for text in texts]
    assert_close(batched, singles, BACKENDS[name].batch_atol)
    assert_close(engine.predict(texts[::-1])[::-1], singles, BACKENDS[name].batch_atol)
    # Each result is its own text's, not a neighbour's: of all single-text scores, its own are nearest.
    for i, scores in enumerate(batched):
        distances = [sum(float(np.abs(probs(scores, h) - probs(single, h)).sum()) for h in HEADS) for single in singles]
        assert distances[i] == min(distances), texts[i]


@pytest.mark.parametrize("name", backend_params())
def test_empty_input_gives_empty_list(name: str, make) -> None:
    assert make(name).predict([]) == []


@pytest.mark.parametrize("name", backend_params())
def test_health(name: str, make, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make(name)
    assert engine.health() is None
    broken = lambda ids, mask: tuple(np.full((len(ids), n), np.nan, np.float32) for n in (3, 8))  # noqa: E731
    monkeypatch.setattr(engine, "_logits", broken)
    with pytest.raises(RuntimeError, match="non-finite"):
        engine.health()


@pytest.mark.parametrize("name", backend_params())
def test_max_batch_size_and_token_budget_are_respected(name: str, make) -> None:
    default = make(name)
    assert default.max_batch_size is None or default.max_batch_size >= 1
    engine = make(name, max_rows=3, max_length=32, token_budget=256)
    assert engine.max_batch_size == 3
    shapes: list[tuple[int, int]] = []
    forward = engine._logits

    def recording(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shapes.append(input_ids.shape)
        return forward(input_ids, attention_mask)

    engine._logits = recording  # type: ignore[method-assign]
    try:
        results = engine.predict([*TEXTS, *TEXTS])
    finally:
        del engine._logits
    assert len(results) == 2 * len(TEXTS)
    assert sum(rows for rows, _ in shapes) == 2 * len(TEXTS)
    assert all(rows <= 3 and width <= 32 and rows * width <= 256 for rows, width in shapes), shapes


@pytest.mark.parametrize("name", backend_params())
def test_padding_stays_within_the_backends_bound(name: str, make) -> None:
    """A few texts of every length are scored in groups of like length, not padded to the longest."""
    engine = make(name)
    bound = engine.max_padding
    batches: list[tuple[int, int]] = []  # (padded, real) tokens of each forward pass
    forward = engine._logits

    def recording(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batches.append((input_ids.size, int(attention_mask.sum())))
        return forward(input_ids, attention_mask)

    engine._logits = recording  # type: ignore[method-assign]
    texts = ["up", "Shares rose 2% after results.", " ".join(["Quarterly revenue beat every estimate"] * 6)]
    try:
        expected = [make(name).predict([text])[0] for text in texts]
        results = engine.predict(texts)
    finally:
        del engine._logits
    assert [r.sentiment.label for r in results] == [e.sentiment.label for e in expected]
    if bound is None:  # a GPU backend pads freely
        return
    assert len(batches) > 1  # these three lengths cannot share a batch within the bound
    assert all(rows_padded <= bound * real for rows_padded, real in batches if real), batches


@pytest.mark.parametrize("name", backend_params())
def test_protocol_attributes(name: str, make) -> None:
    engine = make(name)
    assert engine.backend == name.removesuffix("-fp32")  # the name load_engine and `finpulse bench` use
    assert engine.max_length == 128
    assert callable(engine.health) and callable(engine.predict)


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("name", backend_params())
def test_edge_cases_give_defined_scores(name: str, case: str, make) -> None:
    [scores] = make(name).predict([EDGE_CASES[case]])
    assert_valid(scores)
    assert all(math.isfinite(p) for head in HEADS for p in getattr(scores, head).probs.values())


@pytest.mark.parametrize("name", backend_params())
def test_long_text_is_truncated_not_rejected(name: str, make) -> None:
    engine = make(name)
    big = EDGE_CASES["one_megabyte"]
    [whole], [prefix] = engine.predict([big]), engine.predict([big[:2000]])  # both far beyond 128 tokens
    assert max_diff([whole], [prefix]) <= 1e-6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.unit.test_backend_contract", description="contract data")
    parser.add_argument("--regenerate", action="store_true", help="rewrite tests/unit/data/backend_contract.json")
    args = parser.parse_args(argv)
    if not args.regenerate:
        parser.error("nothing to do; pass --regenerate (the contract itself runs under pytest)")
    stored = regenerate()
    print(f"wrote {len(stored['texts'])} texts, {stored['checkpoint']['model_version']}, to {EXPECTATIONS}")


if __name__ == "__main__":
    main()
