"""Choose and construct an inference backend by name.

Backends register a factory here; "auto" takes the first installed one in _PREFERENCE,
so faster backends (onnxruntime, tensorrt) can be slotted in ahead of torch later.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from engines.base import Engine


def _torch_engine(model_dir: str | Path, **options: object) -> Engine:
    from engines.torch_backend import TorchEngine  # deferred: import torch only when chosen

    return TorchEngine(model_dir, **options)  # type: ignore[arg-type]


# backend name -> (module that must be importable, factory)
_BACKENDS: dict[str, tuple[str, Callable[..., Engine]]] = {
    "torch": ("torch", _torch_engine),
}
_PREFERENCE: tuple[str, ...] = ("torch",)


def available_backends() -> list[str]:
    """Registered backends whose runtime is installed in this environment."""
    return [name for name, (module, _) in _BACKENDS.items() if importlib.util.find_spec(module) is not None]


def load_engine(
    model_dir: str | Path,
    backend: str = "auto",
    *,
    max_length: int = 128,
    token_budget: int = 8192,
    threads: int | None = None,
) -> Engine:
    """Load the checkpoint in model_dir with the named backend ("auto" = best installed)."""
    available = available_backends()
    if backend == "auto":
        backend = next((name for name in _PREFERENCE if name in available), "")
        if not backend:
            raise ValueError(f"no inference backend installed; registered backends: {sorted(_BACKENDS)}")
    elif backend not in available:
        reason = "is not installed" if backend in _BACKENDS else "is unknown"
        raise ValueError(f"backend {backend!r} {reason}; available backends: {available}")
    _, factory = _BACKENDS[backend]
    return factory(model_dir, max_length=max_length, token_budget=token_budget, threads=threads)
