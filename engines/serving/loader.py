"""Choose and construct an inference backend by name.

"auto" takes the first backend in _PREFERENCE that can serve the checkpoint: tensorrt
(installed, a CUDA GPU, model.onnx, and the engine builds), else onnxruntime-int8 (the int8
export model.int8.onnx), else onnxruntime (the fp32 export model.onnx), else torch. The names
mean the same here, in `finpulse bench` and in what an engine reports as its backend.
Exporting is a separate, explicit step (engines.export.onnx_export), so a directory without
an export keeps running on torch.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from engines.serving.backends.onnx_files import EXPORT_HINT, INT8_NAME, ONNX_NAME
from engines.serving.types import Engine

log = logging.getLogger(__name__)


def _torch_engine(model_dir: str | Path, **options: object) -> Engine:
    from engines.serving.backends.torch_engine import TorchEngine  # deferred: import torch only when chosen

    return TorchEngine(model_dir, **options)  # type: ignore[arg-type]


def _onnx_engine(quantized: bool) -> Callable[..., Engine]:
    def make(model_dir: str | Path, **options: object) -> Engine:
        from engines.serving.backends.onnxruntime_engine import OnnxEngine

        return OnnxEngine(model_dir, quantized=quantized, **options)  # type: ignore[arg-type]

    return make


def _tensorrt_engine(model_dir: str | Path, **options: object) -> Engine:
    from engines.serving.backends.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(model_dir, **options)  # type: ignore[arg-type]


def _has(name: str) -> Callable[[Path], str | None]:
    def check(model_dir: Path) -> str | None:
        return None if (model_dir / name).is_file() else f"needs {name} in {model_dir} ({EXPORT_HINT})"

    return check


def _has_gpu_and_onnx(model_dir: Path) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if not (model_dir / ONNX_NAME).is_file():
        return f"needs {ONNX_NAME} in {model_dir} ({EXPORT_HINT})"
    return None


# backend name -> (module that must be importable, factory)
_BACKENDS: dict[str, tuple[str, Callable[..., Engine]]] = {
    "torch": ("torch", _torch_engine),
    "onnxruntime": ("onnxruntime", _onnx_engine(quantized=False)),
    "onnxruntime-int8": ("onnxruntime", _onnx_engine(quantized=True)),
    "tensorrt": ("tensorrt", _tensorrt_engine),
}
# backend name -> what else the checkpoint dir and machine must offer: None when ready, else why not
_READY: dict[str, Callable[[Path], str | None]] = {
    "onnxruntime": _has(ONNX_NAME),
    "onnxruntime-int8": _has(INT8_NAME),
    "tensorrt": _has_gpu_and_onnx,
}
_PREFERENCE: tuple[str, ...] = ("tensorrt", "onnxruntime-int8", "onnxruntime", "torch")


def available_backends() -> list[str]:
    """Registered backends whose runtime is installed in this environment."""
    return [name for name, (module, _) in _BACKENDS.items() if importlib.util.find_spec(module) is not None]


def usable_backends(model_dir: str | Path) -> list[str]:
    """Installed backends that can serve model_dir on this machine, in order of preference."""
    installed = available_backends()
    return [name for name in _PREFERENCE if name in installed and _not_ready(name, model_dir) is None]


def _not_ready(name: str, model_dir: str | Path) -> str | None:
    check = _READY.get(name)
    return check(Path(model_dir)) if check else None


def load_engine(
    model_dir: str | Path,
    backend: str = "auto",
    *,
    max_length: int = 128,
    token_budget: int = 8192,
    threads: int | None = None,
    max_chunks: int = 1,
) -> Engine:
    """Load the checkpoint in model_dir with the named backend ("auto" = best usable, see module doc)."""
    options = {"max_length": max_length, "token_budget": token_budget, "threads": threads, "max_chunks": max_chunks}
    usable = usable_backends(model_dir)
    if backend == "auto":
        if not usable:
            raise ValueError(f"no inference backend can serve {model_dir}; registered backends: {sorted(_BACKENDS)}")
        for name in usable[:-1]:
            try:
                return _BACKENDS[name][1](model_dir, **options)
            except Exception as e:  # noqa: BLE001 - whatever stops a faster backend, the next one may serve
                log.warning("backend %s cannot serve %s (%s); trying the next one", name, model_dir, e)
        backend = usable[-1]
    if backend not in usable:
        if backend not in _BACKENDS:
            reason = "is unknown"
        elif backend not in available_backends():
            reason = "is not installed"
        else:
            reason = _not_ready(backend, model_dir)
        raise ValueError(f"backend {backend!r} {reason}; available backends: {usable}")
    return _BACKENDS[backend][1](model_dir, **options)
