"""engines.export (ONNX export, int8, bench) and what is specific to the ONNX Runtime and TensorRT backends
(file choice, stale exports, plan cache, loader preference), on the tiny offline checkpoint.

What every backend must do with texts (scores, batching, order, edge cases) is in test_backend_contract.py.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines import SENTIMENT_LABELS, Scores, load_engine
from engines.export.bench import bench_backends
from engines.export.int8 import quantize_int8, quantize_int8_static
from engines.export.onnx_export import EXPORT_ATOL, export_onnx
from engines.serving.backends.onnx_files import INT8_NAME, ONNX_NAME
from engines.serving.backends.onnxruntime_engine import OnnxEngine
from engines.serving.backends.torch_engine import TorchEngine
from engines.serving.batching import Batcher
from engines.training.tiny import CORPUS, DEFAULT_TOPICS, build_tiny_checkpoint

from .texts import assert_valid

ALL_CORPUS = [text for texts in CORPUS.values() for text in texts]
# fp32 ONNX Runtime vs PyTorch: the export gate bounds logits by EXPORT_ATOL; probabilities
# move less than logits, so the same bound holds for them.
FP32_PROB_TOL = EXPORT_ATOL
# int8 vs fp32 on the tiny model, whose weights are 25x BERT's scale (initializer_range 0.5)
# and so far harder to quantise than a trained model. On the (now deterministic) tiny checkpoint,
# AVX2: 97 % / 89 % of labels agree (sentiment / topic), mean |probability difference| 0.030 /
# 0.019; over 6 builds with the former trained tokenizer: 86-98 %, 0.012-0.033. These bounds
# leave room for that and other CPUs' kernels and still fail for an int8 model that is broken
# (chance agreement is 1/3 and 1/8) or scrambles rows.
INT8_MIN_AGREEMENT = 0.8
INT8_MEAN_PROB_TOL = 0.06
# Static (calibrated) int8 against PyTorch on the tiny model, calibrated on every other corpus
# text and scored on all of them. On the deterministic tiny checkpoint (seed 0, AVX2): 98 % of
# sentiment and 86 % of topic labels agree, mean |probability difference| 0.026 / 0.023; over 6
# builds with the former trained tokenizer (seeds 0-5): 87-98 % and 85-97 %, 0.011-0.057.
# Activation ranges fixed in advance suit the tiny model's oversized weights worse than
# per-call ranges do, hence the looser bound; a broken graph
# (scrambled rows, lost mask, wrong scales) lands near chance (1/3, 1/8).
STATIC_MIN_AGREEMENT = 0.8
STATIC_MEAN_PROB_TOL = 0.08
STATIC_NAME = "model.int8-static.onnx"
NEEDS_TENSORRT = "needs an NVIDIA GPU and the tensorrt package"


def _gpu_and_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


tensorrt_only = pytest.mark.skipif(not _gpu_and_tensorrt(), reason=NEEDS_TENSORRT)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoint with model.onnx and model.int8.onnx beside the torch weights."""
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-onnx"), seed=0)
    quantize_int8(export_onnx(directory))
    return directory


@pytest.fixture(scope="module")
def torch_engine(model_dir: Path) -> TorchEngine:
    return TorchEngine(model_dir)


@pytest.fixture(scope="module")
def onnx_fp32(model_dir: Path) -> OnnxEngine:
    return OnnxEngine(model_dir, quantized=False, threads=2)


def torch_only_copy(model_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.onnx")))


def max_prob_diff(a: list[Scores], b: list[Scores]) -> float:
    return max(
        abs(x.probs[k] - y.probs[k])
        for sa, sb in zip(a, b)
        for x, y in ((sa.sentiment, sb.sentiment), (sa.topic, sb.topic))
        for k in x.probs
    )


def assert_close_per_head(
    got: list[Scores], expected: list[Scores], *, min_agreement: float, mean_prob_tol: float
) -> None:
    """Valid distributions whose labels mostly agree with `expected` and whose probabilities stay near it, per head."""
    for scores in got:
        assert_valid(scores)
    for head in ("sentiment", "topic"):
        pairs = [(getattr(a, head), getattr(b, head)) for a, b in zip(got, expected)]
        agreement = np.mean([a.label == b.label for a, b in pairs])
        mean_diff = np.mean([abs(a.probs[k] - b.probs[k]) for a, b in pairs for k in a.probs])
        assert agreement >= min_agreement, head
        assert mean_diff <= mean_prob_tol, head


def test_exported_graph_has_named_dynamic_io_and_version(model_dir: Path, torch_engine: TorchEngine) -> None:
    model = onnx.load(model_dir / ONNX_NAME)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["sentiment_logits", "topic_logits"]
    for tensor in model.graph.input:
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        batch, sequence = tensor.type.tensor_type.shape.dim
        assert batch.dim_param and sequence.dim_param  # symbolic, not fixed to the trace's shape
    widths = [o.type.tensor_type.shape.dim[1].dim_value for o in model.graph.output]
    assert widths == [len(SENTIMENT_LABELS), len(DEFAULT_TOPICS)]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["finpulse.model_version"] == torch_engine.model_version


def test_int8_gives_valid_scores_close_to_fp32(model_dir: Path, onnx_fp32: OnnxEngine) -> None:
    int8 = OnnxEngine(model_dir, quantized=True)
    assert int8.onnx_path.name == INT8_NAME
    assert (model_dir / INT8_NAME).stat().st_size < (model_dir / ONNX_NAME).stat().st_size
    got, expected = int8.predict(ALL_CORPUS), onnx_fp32.predict(ALL_CORPUS)
    assert_close_per_head(got, expected, min_agreement=INT8_MIN_AGREEMENT, mean_prob_tol=INT8_MEAN_PROB_TOL)


def test_quantized_option_picks_the_file(model_dir: Path, tmp_path: Path) -> None:
    assert OnnxEngine(model_dir).onnx_path.name == INT8_NAME  # default: int8 when present
    assert OnnxEngine(model_dir, quantized=False).onnx_path.name == ONNX_NAME
    fp32_only = Path(shutil.copytree(model_dir, tmp_path / "fp32", ignore=shutil.ignore_patterns(INT8_NAME)))
    assert OnnxEngine(fp32_only).onnx_path.name == ONNX_NAME
    with pytest.raises(FileNotFoundError, match="quantize_int8"):
        OnnxEngine(fp32_only, quantized=True)


def test_int8_weight_width_is_picked_by_drift_and_recorded(model_dir: Path, tmp_path: Path) -> None:
    # The default builds 7- and 8-bit weights and keeps the one closer to fp32. On the tiny model,
    # whose weights are 25x BERT's, 8-bit weights saturate AVX2's 16-bit int8 products (mean
    # probability shift ~0.1 against ~0.02 with 7 bits), so 7 bits must win; on a VNNI CPU they do not
    # saturate and either may win, hence the check on the recorded choice only where AVX2 is all.
    metadata = {p.key: p.value for p in onnx.load(model_dir / INT8_NAME, load_external_data=False).metadata_props}
    assert metadata["finpulse.int8_mode"] == "dynamic"
    assert metadata["finpulse.int8_reduce_range"] in ("true", "false")
    if not _has_vnni():
        assert metadata["finpulse.int8_reduce_range"] == "true"
    forced = quantize_int8(model_dir / ONNX_NAME, tmp_path / "full.onnx", reduce_range=False)
    forced_metadata = {p.key: p.value for p in onnx.load(forced, load_external_data=False).metadata_props}
    assert forced_metadata["finpulse.int8_reduce_range"] == "false"
    assert not list(tmp_path.glob(".*tmp")) and not list(model_dir.glob(".*tmp"))
    # The pooler and both heads stay fp32 (the quantiser had turned their Gemm into MatMul + Add).
    model = onnx.load(model_dir / INT8_NAME)
    integer = [n.name for n in model.graph.node if n.op_type in ("MatMulInteger", "QAttention")]
    assert integer and all("/encoder/" in name or "Attention" in name for name in integer)
    heads = [n for n in model.graph.node if "head" in n.name or "pooler" in n.name]
    assert {"MatMul", "Tanh"} <= {n.op_type for n in heads}


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown CPU: do not assume AVX2 saturation
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8")) or "avx2" not in flags


@pytest.fixture(scope="module")
def static_int8(model_dir: Path) -> OnnxEngine:
    quantize_int8_static(model_dir / ONNX_NAME, ALL_CORPUS[::2], model_dir / STATIC_NAME)
    return OnnxEngine(model_dir, onnx_file=STATIC_NAME)


def test_static_int8_quantises_the_encoder_and_not_the_heads(model_dir: Path, static_int8: OnnxEngine) -> None:
    model = onnx.load(model_dir / STATIC_NAME)
    ops = [node.op_type for node in model.graph.node]
    # Every encoder MatMul (4 projections + 2 attention products + 2 feed-forward per layer, 2 layers)
    # reads quantised inputs; the pooler and both heads (Gemm) stay fp32.
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 16
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    assert all(producers.get(i) == "DequantizeLinear" for n in matmuls for i in n.input)
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert gemms and all(producers.get(n.input[0]) != "DequantizeLinear" for n in gemms)
    assert "QuantizeLinear" in ops
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["finpulse.int8_mode"] == "static"


def test_static_int8_gives_valid_scores_that_mostly_agree_with_torch(
    static_int8: OnnxEngine, torch_engine: TorchEngine
) -> None:
    assert static_int8.model_version == torch_engine.model_version + "-int8-static"
    got, expected = static_int8.predict(ALL_CORPUS), torch_engine.predict(ALL_CORPUS)
    assert_close_per_head(got, expected, min_agreement=STATIC_MIN_AGREEMENT, mean_prob_tol=STATIC_MEAN_PROB_TOL)
    # Batching must not change a row's scores beyond float noise: the ranges are fixed, not per call.
    one_by_one = [static_int8.predict([text])[0] for text in ALL_CORPUS[:12]]
    assert max_prob_diff(one_by_one, got[:12]) <= 1e-4


def test_static_int8_needs_calibration_texts(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration texts"):
        quantize_int8_static(model_dir / ONNX_NAME, ["", "  "], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8_static(model_dir / ONNX_NAME, ALL_CORPUS[:4], tmp_path / "x.onnx", method="mse")
    assert not list(tmp_path.iterdir())


def test_bench_takes_any_export_of_the_weights(model_dir: Path, static_int8: OnnxEngine) -> None:
    report = bench_backends(model_dir, ALL_CORPUS[:10], ["onnxruntime", f"onnxruntime:{STATIC_NAME}"], repeats=1)
    assert str(report[f"onnxruntime:{STATIC_NAME}"]["model_version"]).endswith("-int8-static")


def test_auto_picks_onnxruntime_when_exported_and_torch_otherwise(model_dir: Path, tmp_path: Path) -> None:
    exported = load_engine(model_dir, threads=1)
    assert exported.backend == ("tensorrt" if _gpu_and_tensorrt() else "onnxruntime-int8")
    # The names mean the same numerics in load_engine, `finpulse bench` and an engine's report.
    assert load_engine(model_dir, "onnxruntime", threads=1).backend == "onnxruntime"
    assert load_engine(model_dir, "onnxruntime", threads=1).onnx_path.name == ONNX_NAME
    assert load_engine(model_dir, "onnxruntime-int8", threads=1).onnx_path.name == INT8_NAME
    plain = torch_only_copy(model_dir, tmp_path / "plain")
    assert load_engine(plain).backend == "torch"
    with pytest.raises(ValueError, match=r"'onnxruntime' needs model.onnx in .*; available backends: \['torch'\]"):
        load_engine(plain, backend="onnxruntime")


def test_stale_export_is_refused_and_auto_falls_back_to_torch(model_dir: Path, tmp_path: Path, caplog) -> None:
    # Retraining rewrites the checkpoint in place and leaves the old exports beside it.
    stale = build_tiny_checkpoint(tmp_path / "stale", seed=1)
    for name in (ONNX_NAME, INT8_NAME):
        shutil.copy(model_dir / name, stale / name)
    with pytest.raises(ValueError, match="exported from other weights"):
        OnnxEngine(stale)
    with caplog.at_level(logging.WARNING, logger="engines.serving.loader"):
        assert load_engine(stale).backend == "torch"
    assert "onnxruntime cannot serve" in caplog.text


def test_export_that_misses_tolerance_raises_and_leaves_no_file(model_dir: Path, tmp_path: Path) -> None:
    plain = torch_only_copy(model_dir, tmp_path / "plain")
    # fp32 kernels reorder sums, so ORT never matches torch to 1e-12 on the tiny model's large logits.
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_onnx(plain, atol=1e-12)
    assert not list(plain.glob("*.onnx*")) and not list(plain.glob(".*tmp"))
    assert load_engine(plain).backend == "torch"


def test_batcher_caps_rows_for_fixed_profiles(torch_engine: TorchEngine) -> None:
    batcher = Batcher(
        torch_engine.batcher.tokenizer, max_length=32, token_budget=8192, sentiment_labels=SENTIMENT_LABELS,
        topic_labels=DEFAULT_TOPICS, max_rows=4,
    )
    encoded = batcher.encode(ALL_CORPUS[:10])
    order = sorted(range(10), key=lambda i: len(encoded[i]))
    assert [len(b) for b in batcher.batches(order, encoded)] == [4, 4, 2]
    seen: list[tuple[int, int]] = []

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(input_ids.shape)
        rows = input_ids.shape[0]
        return input_ids[:, :3].astype(np.float32), np.zeros((rows, len(DEFAULT_TOPICS)), np.float32)

    assert len(batcher.predict(ALL_CORPUS[:10], run)) == 10
    assert [rows for rows, _ in seen] == [4, 4, 2]


def test_bench_reports_each_variant_against_the_first(model_dir: Path) -> None:
    report = bench_backends(model_dir, ALL_CORPUS[:20], ["torch", "onnxruntime", "onnxruntime-int8"], repeats=1)
    assert list(report) == ["torch", "onnxruntime", "onnxruntime-int8"]
    assert report["onnxruntime"]["sentiment_label_agreement"] == 1.0
    assert report["onnxruntime"]["sentiment_max_prob_diff"] <= FP32_PROB_TOL
    assert str(report["onnxruntime-int8"]["model_version"]).endswith("-int8")
    assert all(entry["docs_per_s"] > 0 for entry in report.values())


@pytest.mark.skipif(_gpu_and_tensorrt(), reason="checks the error raised where TensorRT is missing")
def test_tensorrt_missing_is_a_clear_error(model_dir: Path) -> None:
    from engines.serving.backends.tensorrt_engine import TensorRTEngine
    from engines.serving.backends.tensorrt_plan import build_tensorrt_engine

    with pytest.raises(RuntimeError, match=NEEDS_TENSORRT):
        build_tensorrt_engine(model_dir / ONNX_NAME)
    with pytest.raises(RuntimeError, match=NEEDS_TENSORRT):
        TensorRTEngine(model_dir)
    with pytest.raises(ValueError, match=r"'tensorrt' (is not installed|needs a CUDA GPU)"):
        load_engine(model_dir, backend="tensorrt")


@tensorrt_only
def test_tensorrt_engine_is_cached_by_key(model_dir: Path, tmp_path: Path) -> None:
    from engines.serving.backends.tensorrt_plan import build_tensorrt_engine

    first = build_tensorrt_engine(model_dir / ONNX_NAME, fp16=False, cache_dir=tmp_path)
    built_at = first.stat().st_mtime_ns
    assert build_tensorrt_engine(model_dir / ONNX_NAME, fp16=False, cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == built_at  # reused, not rebuilt
    fp16 = build_tensorrt_engine(model_dir / ONNX_NAME, fp16=True, cache_dir=tmp_path)
    assert fp16 != first  # build options are part of the key


@tensorrt_only
def test_tensorrt_default_precision_and_profile(model_dir: Path, torch_engine: TorchEngine, tmp_path: Path) -> None:
    # fp32 scores, batching and order are checked by test_backend_contract.py; here what only TensorRT has.
    from engines.serving.backends.tensorrt_engine import TensorRTEngine

    default = TensorRTEngine(model_dir, cache_dir=tmp_path, batch=(1, 2, 4))
    assert default.model_version == torch_engine.model_version + ("-fp16" if default.fp16 else "")
    assert default.max_batch_size == 4
    many = default.predict(ALL_CORPUS)  # more rows than the profile's max batch of 4
    for scores in many:
        assert_valid(scores)


@tensorrt_only
def test_auto_picks_tensorrt_on_a_gpu(model_dir: Path) -> None:
    assert load_engine(model_dir).backend == "tensorrt"


def test_mean_pooling_and_input_prefix_hold_on_every_backend(tmp_path: Path) -> None:
    """A checkpoint that pools by mask-weighted mean and prefixes its inputs (as e5 does): the ONNX
    exports compute the same pooling, and every backend's batcher puts the prefix in front."""
    import json

    directory = build_tiny_checkpoint(tmp_path / "mean")
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config.update(finpulse_pooling="mean", finpulse_input_prefix="query: ")
    config_file.write_text(json.dumps(config))
    quantize_int8(export_onnx(directory))  # export_onnx checks ONNX fp32 against PyTorch within EXPORT_ATOL
    texts = [t for lang in ("en", "zh", "es") for t in CORPUS[lang][:4]]
    engines = [TorchEngine(directory), OnnxEngine(directory, quantized=False), OnnxEngine(directory, quantized=True)]
    for engine in engines:
        assert engine.batcher.encode(["Zinsen"]) == engine.batcher.tokenizer(["query: Zinsen"])["input_ids"]
    reference, fp32, int8 = (engine.predict(texts) for engine in engines)
    for a, b in zip(reference, fp32):
        assert all(abs(a.sentiment.probs[k] - b.sentiment.probs[k]) < 1e-4 for k in SENTIMENT_LABELS)
    assert sum(a.sentiment.label == c.sentiment.label for a, c in zip(reference, int8)) >= len(texts) * 2 // 3
