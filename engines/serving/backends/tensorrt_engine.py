"""TensorRT inference engine on an NVIDIA GPU, built from the checkpoint's model.onnx.

Importable without tensorrt: the package is imported when an engine is made, so the loader
and tests can name this backend on machines that lack it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.serving.backends.onnx_files import (
    EXPORT_HINT,
    INPUT_NAMES,
    ONNX_NAME,
    OUTPUT_NAMES,
    checked_version,
    onnx_feeds,
    read_metadata,
)
from engines.serving.backends.tensorrt_plan import (
    DEFAULT_BATCH,
    FP16_SUFFIX,
    build_tensorrt_engine,
    require_tensorrt,
    tensorrt_has_fp16_flag,
)
from engines.serving.base import BatchedEngine


class TensorRTEngine(BatchedEngine):
    """Scores texts with a cached TensorRT plan; torch CUDA tensors serve as the I/O buffers.

    The plan's optimisation profile covers sequences up to max_length and batches up to
    batch[2] rows, which is the engine's max_batch_size; otherwise it batches exactly like the
    other backends. fp16 defaults to whether the installed TensorRT can build fp16 from the
    fp32 export (see tensorrt_plan.build_tensorrt_engine); fp16 plans report "<version>-fp16".
    threads is accepted like every backend's and ignored: the GPU does the work.
    """

    backend = "tensorrt"
    max_padding = None

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_length: int = 128,
        token_budget: int = 8192,
        threads: int | None = None,
        max_chunks: int = 1,
        fp16: bool | None = None,
        batch: Sequence[int] = DEFAULT_BATCH,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.fp16 = fp16
        self.batch = tuple(batch)
        self.cache_dir = cache_dir
        super().__init__(
            model_dir, max_length=max_length, token_budget=token_budget, threads=threads, max_rows=self.batch[2],
            max_chunks=max_chunks,
        )

    def _load(self, model_dir: str | Path) -> str:
        import torch

        trt, _ = require_tensorrt()
        if self.fp16 is None:
            self.fp16 = tensorrt_has_fp16_flag(trt)
        model_dir = Path(model_dir)
        onnx_path = model_dir / ONNX_NAME
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path} not found; create it with {EXPORT_HINT}")
        version = checked_version(read_metadata(onnx_path), onnx_path, model_dir)
        sequence = (1, max(1, self.max_length // 2), self.max_length)
        plan = build_tensorrt_engine(
            onnx_path, fp16=self.fp16, batch=self.batch, sequence=sequence, cache_dir=self.cache_dir
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not load {plan}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._device = torch.device("cuda")
        self._stream = torch.cuda.Stream()
        dtypes = {trt.int32: torch.int32, trt.int64: torch.int64, trt.float16: torch.float16, trt.float32: torch.float32}
        self._dtypes = {name: dtypes[self._engine.get_tensor_dtype(name)] for name in INPUT_NAMES + OUTPUT_NAMES}
        return version + FP16_SUFFIX if self.fp16 else version

    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            # Kept referenced until the results are copied back: TensorRT holds raw pointers.
            tensors = {
                name: torch.from_numpy(a).to(self._device, self._dtypes[name], non_blocking=True)
                for name, a in onnx_feeds(input_ids, attention_mask).items()
            }
            for name, tensor in tensors.items():
                self._context.set_input_shape(name, tuple(tensor.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
            for name in OUTPUT_NAMES:
                shape = tuple(self._context.get_tensor_shape(name))
                tensors[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                self._context.set_tensor_address(name, tensors[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            # .cpu() into pageable memory waits for the stream, so the buffers outlive the run.
            sentiment, topic = (tensors[name].float().cpu().numpy() for name in OUTPUT_NAMES)
        return sentiment, topic
