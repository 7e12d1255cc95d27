"""Build (or reuse) a TensorRT plan from an ONNX export: what the TensorRT backend loads.

It lives on the serving side because the backend builds its plan on first use; the export
tooling (`finpulse export --to tensorrt`) calls the same function ahead of time. Importable
without tensorrt: the package is imported when a plan is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from engines.serving.backends.onnx_files import INPUT_NAMES
from engines.serving.checkpoint import sha256_file, temp_beside

log = logging.getLogger(__name__)

MISSING = "the TensorRT backend needs an NVIDIA GPU and the tensorrt package"
# Optimisation profile rows (min, opt, max): 64, half the worker's default micro-batch
# (FINPULSE_BATCH_MAX=128, chosen on CPU); the engine splits bigger calls into rows of 64.
DEFAULT_BATCH = (1, 32, 64)
# Optimisation profile sequence lengths (min, opt, max) for the default max_length of 128.
DEFAULT_SEQUENCE = (1, 64, 128)
# A plan that may pick fp16 kernels moves scores beyond float noise: "<version>-fp16".
FP16_SUFFIX = "-fp16"
TENSORRT_DIR = "tensorrt"


def require_tensorrt() -> tuple[ModuleType, str]:
    """(tensorrt module, CUDA device name), or RuntimeError saying which of the two is missing."""
    try:
        import tensorrt
    except ImportError as e:
        raise RuntimeError(f"{MISSING}: {e}") from None
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"{MISSING}: no CUDA device is visible to torch")
    return tensorrt, torch.cuda.get_device_name()


def tensorrt_has_fp16_flag(trt: ModuleType) -> bool:
    """Whether this TensorRT can pick fp16 kernels for an fp32 graph (10.x; 11.x dropped the flag)."""
    return hasattr(trt.BuilderFlag, "FP16")


def build_tensorrt_engine(
    onnx_path: str | Path,
    *,
    fp16: bool = True,
    int8: bool = False,
    batch: Sequence[int] = DEFAULT_BATCH,
    sequence: Sequence[int] = DEFAULT_SEQUENCE,
    cache_dir: str | Path | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build (or reuse) a serialised TensorRT engine for onnx_path; returns the plan file.

    batch and sequence are the optimisation profile's (min, opt, max) for all three inputs.
    Plans are cached in cache_dir (default <onnx dir>/tensorrt) under a key of the ONNX file's
    sha256, the TensorRT version, the GPU name and these build options, since a plan only runs
    on the TensorRT release and GPU model that built it, and an fp32 plan must never be
    served for an fp16 request or the reverse.

    fp16 lets TensorRT 10 choose fp16 kernels for an fp32 graph (its FP16 builder flag).
    TensorRT 11 builds strongly typed networks only and dropped that flag, so there fp16 needs
    an ONNX graph that is already fp16 (ModelOpt AutoCast) and fp16=True is refused.
    int8 needs an explicitly quantised ONNX (QuantizeLinear/DequantizeLinear nodes): calibration
    is deprecated in 10 and gone in 11, and TensorRT cannot parse ONNX Runtime's dynamic int8
    ops (model.int8.onnx).
    """
    trt, gpu_name = require_tensorrt()
    onnx_path = Path(onnx_path)
    batch, sequence = _profile("batch", batch), _profile("sequence", sequence)
    if fp16 and not tensorrt_has_fp16_flag(trt):
        raise ValueError(f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only); use fp16=False")
    if int8 and not _has_qdq(onnx_path):
        raise ValueError(f"{onnx_path}: int8 needs QuantizeLinear/DequantizeLinear nodes (explicit quantisation)")
    key = "|".join(
        [sha256_file(onnx_path), trt.__version__, gpu_name, f"fp16={fp16}", f"int8={int8}", f"batch={batch}",
         f"sequence={sequence}"]
    )
    cache_dir = Path(cache_dir) if cache_dir else onnx_path.parent / TENSORRT_DIR
    plan_path = cache_dir / f"{onnx_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.plan"
    if plan_path.is_file():
        return plan_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        # fp32 must mean fp32: TF32 matmuls (on by default from Ampere on) would move the scores
        # while the plan claims the unsuffixed version it shares with torch.
        config.clear_flag(trt.BuilderFlag.TF32)
    if int8 and hasattr(trt.BuilderFlag, "INT8"):  # TensorRT 10; 11 reads the precision from the Q/DQ nodes
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, *((b, s) for b, s in zip(batch, sequence)))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(plan_path)
    try:
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, plan_path)  # workers building the same plan at once each write a whole file
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built TensorRT engine %s for %s on %s", plan_path, onnx_path, gpu_name)
    return plan_path


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def _profile(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    low, opt, high = (int(n) for n in shape)
    if not 1 <= low <= opt <= high:
        raise ValueError(f"{name} profile must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(shape)}")
    return low, opt, high
