"""ONNX Runtime (CPU) inference engine for checkpoints exported by engines.export.

The files and their version metadata are described in engines.serving.backends.onnx_files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.serving.backends.onnx_files import INT8_MODE_KEY, INT8_NAME, ONNX_NAME, OUTPUT_NAMES, checked_version, onnx_feeds
from engines.serving.base import BatchedEngine

if TYPE_CHECKING:
    import onnxruntime


class OnnxEngine(BatchedEngine):
    """Scores texts with ONNX Runtime on CPU, batching exactly like TorchEngine (BatchedEngine)."""

    backend = "onnxruntime"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
        max_rows: int | None = None,
        max_chunks: int = 1,
        quantized: bool | None = None,
        onnx_file: str | Path | None = None,
    ) -> None:
        """quantized: None = model.int8.onnx when present, else model.onnx; True/False force one.
        model.int8.onnx is whatever `finpulse export` wrote there: dynamic int8 by default (fastest
        on CPU, docs/model-quality.md 3.1) or static with --int8-mode static; its metadata
        (finpulse.int8_mode, finpulse.int8_reduce_range) and model_version suffix tell which.
        onnx_file: another ONNX export of these weights (relative to model_dir or absolute), e.g. a
        quantisation variant being compared; it overrides quantized."""
        self.quantized = quantized
        self.onnx_file = onnx_file
        super().__init__(
            model_dir, max_length=max_length, token_budget=token_budget, threads=threads, max_rows=max_rows,
            max_chunks=max_chunks,
        )

    def _load(self, model_dir: str | Path) -> str:
        model_dir = Path(model_dir)
        if self.onnx_file is not None:
            self.onnx_path = model_dir / self.onnx_file
        else:
            self.onnx_path = _pick_model(model_dir, self.quantized)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"{self.onnx_path} not found")
        self.session = create_session(self.onnx_path, threads=self.threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        # Named as load_engine and `finpulse bench` name it, so /health and reports say which numerics serve.
        self.backend = "onnxruntime-int8" if INT8_MODE_KEY in metadata else "onnxruntime"
        return checked_version(metadata, self.onnx_path, model_dir)

    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sentiment, topic = self.session.run(list(OUTPUT_NAMES), onnx_feeds(input_ids, attention_mask))
        return sentiment, topic


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
    # Idle pool threads sleep instead of spinning: in the worker the same cores run Faust, Kafka and SQL, and
    # spinning burnt their time (bench --pipeline, starter int8: 30.6 -> 21.8 worker CPU ms per document cold).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _pick_model(model_dir: Path, quantized: bool | None) -> Path:
    fp32, int8 = model_dir / ONNX_NAME, model_dir / INT8_NAME
    if quantized is None:
        path = int8 if int8.is_file() else fp32
    else:
        path = int8 if quantized else fp32
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; create it with engines.export (onnx_export.export_onnx, int8.quantize_int8)"
        )
    return path


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
