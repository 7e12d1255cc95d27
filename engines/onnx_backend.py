"""ONNX Runtime (CPU) inference engine for checkpoints exported by engines.export.

The ONNX files live in the checkpoint directory beside model.safetensors and the tokenizer,
so one directory serves every backend. Each ONNX file carries the model_version of the
weights it was exported from in its metadata (see engines.export), which lets the engine
refuse an export left behind by retraining instead of caching its scores under the new version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.base import Scores
from engines.batching import WEIGHTS_NAME, Batcher, sha256_file

if TYPE_CHECKING:
    import onnxruntime

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("sentiment_logits", "topic_logits")
VERSION_KEY = "finpulse.model_version"
WEIGHTS_SHA_KEY = "finpulse.weights_sha256"


class OnnxEngine:
    """Scores texts with ONNX Runtime on CPU, batching exactly like TorchEngine (engines.batching)."""

    backend = "onnxruntime"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
        quantized: bool | None = None,
        onnx_file: str | Path | None = None,
    ) -> None:
        """quantized: None = model.int8.onnx when present, else model.onnx; True/False force one.
        model.int8.onnx is whatever `finpulse export` wrote there: dynamic int8 by default (fastest
        on CPU, docs/model-quality.md 3.1) or static with --int8-mode static; its metadata
        (finpulse.int8_mode, finpulse.int8_reduce_range) and model_version suffix tell which.
        onnx_file: another ONNX export of these weights (relative to model_dir or absolute), e.g. a
        quantisation variant being compared; it overrides quantized."""
        model_dir = Path(model_dir)
        self.max_length = max_length
        self.token_budget = token_budget
        self.batcher = Batcher.for_checkpoint(model_dir, max_length=max_length, token_budget=token_budget)
        self.onnx_path = model_dir / onnx_file if onnx_file is not None else _pick_model(model_dir, quantized)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"{self.onnx_path} not found")
        self.session = create_session(self.onnx_path, threads=threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.model_version = checked_version(metadata, self.onnx_path, model_dir)

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """Score texts; results are in input order, [] for []."""
        return self.batcher.predict(texts, self._logits)

    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sentiment, topic = self.session.run(list(OUTPUT_NAMES), onnx_feeds(input_ids, attention_mask))
        return sentiment, topic


def onnx_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs by name; token type 0 throughout, as for single-segment texts."""
    return dict(zip(INPUT_NAMES, (input_ids, attention_mask, np.zeros_like(input_ids))))


def create_session(onnx_path: str | Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU session tuned for one scoring call at a time.

    intra_op threads parallelise each matmul; inter_op is 1 because a BERT graph is a chain
    with nothing to run side by side, and extra pools would only contend for the same cores.
    The default is the CPUs this process may run on (its affinity), not the host's count,
    which oversubscribes a CPU-pinned container.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or _usable_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def checked_version(metadata: dict[str, str], onnx_path: Path, model_dir: Path) -> str:
    """The model_version recorded at export, after checking that model.safetensors still holds those weights."""
    if VERSION_KEY not in metadata or WEIGHTS_SHA_KEY not in metadata:
        raise ValueError(f"{onnx_path}: no finpulse version metadata; export it with engines.export.export_onnx")
    weights = model_dir / WEIGHTS_NAME
    if weights.is_file() and sha256_file(weights) != metadata[WEIGHTS_SHA_KEY]:
        raise ValueError(
            f"{onnx_path} was exported from other weights than {weights} (retrained since?); "
            "re-run engines.export.export_onnx"
        )
    return metadata[VERSION_KEY]


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props, without loading external weight files."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _pick_model(model_dir: Path, quantized: bool | None) -> Path:
    fp32, int8 = model_dir / ONNX_NAME, model_dir / INT8_NAME
    if quantized is None:
        path = int8 if int8.is_file() else fp32
    else:
        path = int8 if quantized else fp32
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; create it with engines.export (export_onnx, quantize_int8)")
    return path


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
