"""int8 variants of an ONNX export for CPUs: dynamic (weights only, per call activation ranges)
and static (activation ranges calibrated once on texts), both via ONNX Runtime's quantiser.

Both fuse the graph into ONNX Runtime's BERT kernels first and keep the pooler and the two
heads fp32. Their scores differ from fp32, so each file carries a suffixed model_version
("-int8", "-int8-static") and records how it was made in its metadata (onnx_files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.export.onnx_export import VERIFY_TEXTS
from engines.serving.backends.onnx_files import (
    EXPORT_HINT,
    HEADS_KEY,
    HIDDEN_KEY,
    INT8_EMBEDDINGS_KEY,
    INT8_MODE_KEY,
    INT8_NAME,
    REDUCE_RANGE_KEY,
    VERSION_KEY,
    onnx_feeds,
    read_metadata,
    set_metadata,
)
from engines.serving.backends.onnxruntime_engine import OnnxEngine
from engines.serving.batching import Batcher
from engines.serving.checkpoint import temp_beside

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

INT8_SUFFIX = "-int8"
STATIC_SUFFIX = "-int8-static"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _fuse_bert(
    onnx_path: Path, metadata: dict[str, str], *, attention: bool = True, gelu_approximation: bool = False
) -> onnx.ModelProto:
    """ONNX Runtime's BERT fusions (contrib ops: ONNX Runtime only); counts logged so a graph that stopped fusing shows.

    attention=False leaves each layer's attention as plain MatMul/Softmax ops (the other fusions
    still apply), which static quantisation can reach: it has no int8 form of the fused op.
    gelu_approximation swaps the erf GELU for its tanh approximation (FastGelu).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = attention
    options.enable_gelu_approximation = gelu_approximation
    optimized = optimize_model(
        str(onnx_path),
        model_type="bert",
        num_heads=int(metadata.get(HEADS_KEY, 0)),  # 0: read off the graph
        hidden_size=int(metadata.get(HIDDEN_KEY, 0)),
        optimization_options=options,
    )
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    log.info("ONNX Runtime fusions: %s", fused)
    return optimized.model


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path | None = None,
    *,
    attention: bool = True,
    gelu_approximation: bool = False,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quantize_heads: bool = False,
    embeddings: bool | None = None,
    check_texts: Sequence[str] | None = None,
) -> Path:
    """Fuse for ONNX Runtime, then quantise weights to int8 dynamically (default: model.int8.onnx beside onnx_path).

    MatMul and the fused Attention (its QKV projection) are quantised: they hold nearly all of
    BERT's compute. attention=False keeps Attention fp32: slower, closer to fp32 (docs/model-quality.md
    measures both). Gather (the embedding tables) would shrink the file but costs accuracy and
    no time, and the pooler and the two heads stay fp32 (quantize_heads=False) because rounding
    the last layers moves the probabilities most; the quantiser turns their Gemm into MatMul +
    Add first, so they are excluded under both names. Weights are int8 per output channel.

    reduce_range: True quantises weights to 7 bits, False to the full 8. x86 CPUs without VNNI
    (AVX2) multiply uint8 activations by int8 weights in saturating 16-bit pairs, which
    full-range weights can overflow; with VNNI (or AVX-512 VNNI/AMX) the products are summed in
    32 bits and 8 bits are simply more precise. Which wins on an AVX2 CPU depends on the model's
    weights and activations: on the fine-tuned MiniLM-L6 full range changed 4 of 689 labels
    against 11 (docs/model-quality.md), on the tiny test model (25x BERT's weight scale) it
    kept only 56-93 % of topic labels against 89-96 %. None (default) builds both and keeps
    the one whose probabilities stay closer to the fp32 ONNX model's on check_texts (default:
    the export's verification texts) on this machine's kernels; both figures are logged.
    embeddings: True stores the embedding tables (the fused EmbedLayerNormalization's inputs) as
    uint8 too. They cost no compute, only file size and memory, but with a 250k-piece vocabulary
    they are 82 % of the weights (multilingual-e5-small: 384 MB of 470). None (default) does it
    when the word embeddings hold more than half of the model's weights.
    Scores differ from fp32, so the file carries "<version>-int8".
    """
    import onnx

    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else onnx_path.with_name(INT8_NAME)
    metadata = read_metadata(onnx_path)
    if VERSION_KEY not in metadata:
        raise ValueError(f"{onnx_path}: no finpulse version metadata; export it with {EXPORT_HINT}")
    fused = temp_beside(out_path.with_name(out_path.name + ".fused"))
    candidates = {choice: temp_beside(out_path.with_name(f"{out_path.name}.rr{int(choice)}"))
                  for choice in ((True, False) if reduce_range is None else (reduce_range,))}
    try:
        fused_model = _fuse_bert(onnx_path, metadata, gelu_approximation=gelu_approximation)
        if embeddings is None:
            embeddings = _embedding_share(fused_model) > 0.5
        onnx.save(fused_model, fused)
        exclude = [] if quantize_heads else [n + suffix for n in _head_nodes(fused_model) for suffix in ("", "_MatMul")]
        for choice, path in candidates.items():
            _quantize_dynamic(fused, path, metadata, attention=attention, per_channel=per_channel,
                              reduce_range=choice, exclude=exclude, embeddings=embeddings)
        if len(candidates) > 1:
            shifts = {c: _mean_prob_shift(onnx_path, path, check_texts or VERIFY_TEXTS) for c, path in candidates.items()}
            choice = min(shifts, key=shifts.get)  # type: ignore[arg-type]
            log.info("int8 mean |probability shift| vs fp32: 7-bit weights %.4f, 8-bit %.4f; keeping %s",
                     shifts[True], shifts[False], "7-bit" if choice else "8-bit")
        else:
            [choice] = candidates
        os.replace(candidates[choice], out_path)
    finally:
        fused.unlink(missing_ok=True)
        for path in candidates.values():
            path.unlink(missing_ok=True)
    return out_path


def _embedding_share(model: onnx.ModelProto) -> float:
    """Share of the model's weights in its largest initializer, the word-embedding table."""
    sizes = [int(np.prod(t.dims)) for t in model.graph.initializer]
    return max(sizes) / sum(sizes) if sizes else 0.0


def _quantize_dynamic(
    fused: Path, out: Path, metadata: dict[str, str], *, attention: bool, per_channel: bool, reduce_range: bool,
    exclude: list[str], embeddings: bool,
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fused,
        out,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=reduce_range,
        op_types_to_quantize=["MatMul", *(["Attention"] if attention else []),
                              *(["EmbedLayerNormalization"] if embeddings else [])],
        nodes_to_exclude=exclude,
        # The fused BERT ops come from ONNX Runtime's contrib domain, whose outputs ONNX
        # shape inference cannot type; they are all float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(out)
    set_metadata(model, {
        **metadata, VERSION_KEY: metadata[VERSION_KEY] + INT8_SUFFIX, INT8_MODE_KEY: "dynamic",
        REDUCE_RANGE_KEY: str(reduce_range).lower(), INT8_EMBEDDINGS_KEY: str(embeddings).lower(),
    })
    onnx.save(model, out)


def _mean_prob_shift(reference: Path, candidate: Path, texts: Sequence[str]) -> float:
    texts = list(texts)
    ref = OnnxEngine(reference.parent, onnx_file=reference.resolve(), threads=None).predict(texts)
    got = OnnxEngine(reference.parent, onnx_file=candidate.resolve(), threads=None).predict(texts)
    diffs = [abs(x.probs[k] - y.probs[k]) for a, b in zip(ref, got)
             for x, y in ((a.sentiment, b.sentiment), (a.topic, b.topic)) for k in x.probs]
    return float(np.mean(diffs))


def quantize_int8_static(
    onnx_path: str | Path,
    calibration_texts: Sequence[str],
    out_path: str | Path | None = None,
    *,
    method: str = "minmax",
    fuse_attention: bool = False,
    per_channel: bool = True,
    reduce_range: bool = True,
    qdq: bool = True,
    max_length: int = 128,
    batch_rows: int = 16,
    extra_options: dict[str, object] | None = None,
) -> Path:
    """Static (calibrated) int8: activation ranges measured once on calibration_texts, not per call.

    The checkpoint's tokenizer (in onnx_path's directory) encodes the texts the way the
    backends do; batches of batch_rows padded rows feed ONNX Runtime's calibrator (method
    minmax, entropy or percentile). Weights are int8 per channel with reduce_range (7 bits) for
    the reason given in quantize_int8; activations are uint8. ONNX Runtime has no static
    int8 form of its fused Attention, so fuse_attention=False (default) leaves attention as
    MatMuls that get quantised (the QKV projections and both attention products), while True
    keeps the fused Attention in fp32. qdq=True writes QuantizeLinear/DequantizeLinear pairs,
    which ONNX Runtime's CPU provider fuses into int8 kernels when the session is created;
    False writes QLinearMatMul-style operators directly. The pooler and the heads stay fp32.
    Scores differ from fp32 and from dynamic int8, so the file carries "<version>-int8-static".
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    texts = [t for t in calibration_texts if t.strip()]
    if not texts:
        raise ValueError("static int8 needs calibration texts")
    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else onnx_path.with_name(INT8_NAME)
    metadata = read_metadata(onnx_path)
    if VERSION_KEY not in metadata:
        raise ValueError(f"{onnx_path}: no finpulse version metadata; export it with {EXPORT_HINT}")
    batcher = Batcher.for_checkpoint(onnx_path.parent, max_length=max_length, token_budget=max_length * batch_rows)
    encoded = batcher.encode(texts)
    feeds = [onnx_feeds(*batcher.pad(encoded[i : i + batch_rows])) for i in range(0, len(encoded), batch_rows)]
    if method != "minmax":  # the histogram collectors need one shape across batches: full batches, one width
        feeds = [f for f in feeds if len(f["input_ids"]) == batch_rows] or feeds[:1]
        width = max(f["input_ids"].shape[1] for f in feeds)
        feeds = [
            {k: np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=batcher.tokenizer.pad_token_id * (k == "input_ids"))
             for k, v in f.items()}
            for f in feeds
        ]
    fused_model = _with_types(_fuse_bert(onnx_path, metadata, attention=fuse_attention))
    # Leave the pooler and both heads fp32 (see quantize_int8): every node after the [CLS] pick.
    exclude = _head_nodes(fused_model)
    tmp = temp_beside(out_path)
    fused = temp_beside(out_path.with_name(out_path.name + ".fused"))
    try:
        onnx.save(fused_model, fused)
        quantize_static(
            fused,
            tmp,
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options={
                "DefaultTensorType": onnx.TensorProto.FLOAT,
                "MatMulConstBOnly": False,
                **(extra_options or {}),
            },
        )
        model = onnx.load(tmp)
        set_metadata(model, {
            **metadata, VERSION_KEY: metadata[VERSION_KEY] + STATIC_SUFFIX, INT8_MODE_KEY: "static",
            REDUCE_RANGE_KEY: str(reduce_range).lower(),
        })
        onnx.save(model, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        fused.unlink(missing_ok=True)
        for stale in out_path.parent.glob(f"{fused.name}*"):  # the calibrator's augmented copies
            stale.unlink(missing_ok=True)
    return out_path


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every intermediate tensor typed: the static quantiser skips tensors it cannot type,
    and ONNX's own shape inference does not know the contrib ops (SkipLayerNormalization, BiasGelu)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over prepared input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._next = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the encoder: the pooling ([CLS] pick and pooler, or the masked mean) and the heads."""
    outputs = {o.name for o in model.graph.output}
    # Walk back from the outputs to the pooling's first op: the [CLS] pick (Gather/Slice/Squeeze) or the
    # masked mean's sums (ReduceSum). Everything passed belongs to the heads.
    producers = {out: node for node in model.graph.node for out in node.output}
    heads: list[str] = []
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        heads.append(node.name)
        if node.op_type in ("Gather", "Slice", "Squeeze", "ReduceSum"):
            continue  # the pooling's first op: what feeds it is the encoder
        stack.extend(node.input)
    return heads
