"""Throughput of the inference backends on one checkpoint, in one process, on the same texts.

Numbers are end to end (tokenising, batching, inference, softmax), i.e. what the worker gets
per scoring call, and each variant is compared with the first one listed so a speed-up is
never reported without the score drift that bought it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engines.serving.types import Engine, Scores


def _torch(model_dir: Path, **options: object) -> Engine:
    from engines.serving.backends.torch_engine import TorchEngine

    return TorchEngine(model_dir, **options)  # type: ignore[arg-type]


def _onnx(quantized: bool) -> Callable[..., Engine]:
    def make(model_dir: Path, **options: object) -> Engine:
        from engines.serving.backends.onnxruntime_engine import OnnxEngine

        return OnnxEngine(model_dir, quantized=quantized, **options)  # type: ignore[arg-type]

    return make


def _tensorrt(fp16: bool) -> Callable[..., Engine]:
    def make(model_dir: Path, **options: object) -> Engine:
        from engines.serving.backends.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(model_dir, fp16=fp16, **options)  # type: ignore[arg-type]

    return make


# What bench_backends accepts: a backend plus the numeric variant it serves.
VARIANTS: dict[str, Callable[..., Engine]] = {
    "torch": _torch,
    "onnxruntime": _onnx(quantized=False),
    "onnxruntime-int8": _onnx(quantized=True),
    "tensorrt": _tensorrt(fp16=False),
    "tensorrt-fp16": _tensorrt(fp16=True),
}


def make_variant(name: str, model_dir: Path, **options: object) -> Engine:
    """An engine for a key of VARIANTS, or for "onnxruntime:FILE": ONNX Runtime on another export of
    the same weights (FILE relative to model_dir or absolute), to compare quantisation variants.
    A suffix "@N" scores long texts over at most N chunks (`torch@8`; default 1), to price chunking."""
    name, _, chunks = name.partition("@")
    if chunks:
        options["max_chunks"] = int(chunks)
    if name.startswith("onnxruntime:"):
        from engines.serving.backends.onnxruntime_engine import OnnxEngine

        return OnnxEngine(model_dir, onnx_file=name.split(":", 1)[1], **options)  # type: ignore[arg-type]
    return VARIANTS[name](model_dir, **options)


def bench_backends(
    model_dir: str | Path,
    texts: Sequence[str],
    backends: Sequence[str] = ("torch", "onnxruntime", "onnxruntime-int8"),
    *,
    threads: int | None = 2,
    max_length: int = 128,
    token_budget: int = 8192,
    repeats: int = 3,
) -> dict[str, dict[str, object]]:
    """Score texts with each variant in backends (keys of VARIANTS); returns variant -> figures.

    Figures: seconds and docs_per_s (median over repeats, after one warm-up call), best_seconds,
    speedup over the first variant (by medians), and agreement with it: share of identical
    labels per head and the largest probability difference; model_version shows which
    variants share cached scores. Repeats go round-robin over the variants, so that load
    from other processes that comes and goes during the run weighs on all of them alike.
    """
    unknown = [
        name for name in backends
        if name.partition("@")[0] not in VARIANTS and not name.startswith("onnxruntime:")
        or not (name.partition("@")[2] or "1").isdigit()
    ]
    if unknown or not backends or repeats < 1:
        raise ValueError(f"backends must be a non-empty subset of {sorted(VARIANTS)} and repeats >= 1; got {backends}")
    engines = {
        name: make_variant(name, Path(model_dir), max_length=max_length, token_budget=token_budget, threads=threads)
        for name in backends
    }
    for engine in engines.values():
        engine.predict(texts[:64])  # warm-up: first-call allocations, kernel selection
    runs: dict[str, list[float]] = {name: [] for name in backends}
    scores: dict[str, list[Scores]] = {}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            scores[name] = engine.predict(texts)
            runs[name].append(time.perf_counter() - start)
    first = backends[0]
    base_seconds = statistics.median(runs[first])
    results: dict[str, dict[str, object]] = {}
    for name, engine in engines.items():
        seconds = statistics.median(runs[name])
        results[name] = {
            "backend": engine.backend,
            "model_version": engine.model_version,
            "docs": len(texts),
            "seconds": seconds,
            "best_seconds": min(runs[name]),
            "docs_per_s": len(texts) / seconds,
            "speedup": base_seconds / seconds,
            **_agreement(scores[first], scores[name]),
        }
    return results


def _agreement(reference: list[Scores], scores: list[Scores]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for head in ("sentiment", "topic"):
        pairs = [(getattr(a, head), getattr(b, head)) for a, b in zip(reference, scores)]
        figures[f"{head}_label_agreement"] = sum(a.label == b.label for a, b in pairs) / max(len(pairs), 1)
        figures[f"{head}_max_prob_diff"] = max((abs(a.probs[k] - b.probs[k]) for a, b in pairs for k in a.probs), default=0.0)
    return figures
