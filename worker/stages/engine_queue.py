"""The model's queue: one engine call at a time, in a thread, with the calls that wait merged into the next.

The worker scores several windows of documents at once (FINPULSE_SCORE_IN_FLIGHT). Windows that
reach the model while it is busy wait here and go in together as soon as it is free, so the model
never waits for a window's outputs to be sent before starting the next, and under a backlog it gets
larger, length-sorted batches (engines.serving.batching), which pad less. This is the queue of
text-embeddings-inference, on the windows a Faust agent takes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engines import Engine, Scores
from worker import metrics


@dataclass
class _Call:
    engine: Engine
    texts: list[str]
    result: asyncio.Future[list[Scores]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EngineQueue:
    """max_texts: most texts one engine call merges (a single call larger than that still goes alone).

    Calls are served in arrival order, and merged only with the calls for the same engine: a promoted
    model's windows never share a batch with the old one's."""

    def __init__(self, max_texts: int) -> None:
        if max_texts < 1:
            raise ValueError(f"max_texts must be >= 1, got {max_texts}")
        self.max_texts = max_texts
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._waiting: deque[_Call] = deque()
        self._runner: asyncio.Task[None] | None = None

    async def predict(self, engine: Engine, texts: Sequence[str]) -> list[Scores]:
        """Scores for texts, in order; raises what the engine raised on the call they went in with."""
        call = _Call(engine, list(texts))
        self._waiting.append(call)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        return await call.result

    async def predict_alone(self, engine: Engine, texts: Sequence[str]) -> list[Scores]:
        """One engine call for these texts only, merged with nothing (it runs after the call the engine's thread is
        on): for isolating a text that fails."""
        return await self._call(engine, list(texts))

    async def _run(self) -> None:
        while self._waiting:
            calls = self._next_calls()
            live = [call for call in calls if not call.result.done()]  # a cancelled window needs no scores
            if not live:
                continue
            texts = [text for call in live for text in call.texts]
            engine = live[0].engine
            try:
                scores = await self._call(engine, texts)
            except asyncio.CancelledError:  # closing: nobody waits for these windows any more
                for call in live:
                    call.result.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - each window's caller decides (ScoreStage isolates the text)
                for call in live:
                    if not call.result.done():
                        call.result.set_exception(exc)
                continue
            start = 0
            for call in live:
                if not call.result.done():
                    call.result.set_result(scores[start : start + len(call.texts)])
                start += len(call.texts)

    def _next_calls(self) -> list[_Call]:
        """The oldest call and those after it for the same engine, up to max_texts texts together."""
        first = self._waiting.popleft()
        calls, total = [first], len(first.texts)
        while self._waiting and self._waiting[0].engine is first.engine and total + len(self._waiting[0].texts) <= self.max_texts:
            call = self._waiting.popleft()
            calls.append(call)
            total += len(call.texts)
        return calls

    async def _call(self, engine: Engine, texts: list[str]) -> list[Scores]:
        """engine.predict(texts) in the engine's thread, counted in the engine metrics."""
        started = time.perf_counter()
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._executor, engine.predict, texts)
        except Exception:
            metrics.ENGINE_ERRORS.inc()
            raise
        metrics.ENGINE_SECONDS.labels(engine.backend).observe(time.perf_counter() - started)
        metrics.ENGINE_BATCH_TEXTS.observe(len(texts))
        metrics.ENGINE_BATCHES.inc()
        metrics.ENGINE_TEXTS.inc(len(texts))
        return scores

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for call in self._waiting:
            call.result.cancel()
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
