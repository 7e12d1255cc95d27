"""The model's queue: windows that wait for the engine go in together, in order, one version at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from engines import load_engine
from engines.training.tiny import build_tiny_checkpoint
from worker.settings import CacheSettings
from worker.stages.cache import ScoreCache
from worker.stages.decode import decode
from worker.stages.engine_queue import EngineQueue
from worker.stages.entities import Watchlist
from worker.stages.records import Record
from worker.stages.score import ScoreStage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_engine(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny")), "torch")


class Held:
    """A real engine whose calls wait until the test lets them through; it records the texts of each call,
    and raises on a poison text as a broken model would."""

    def __init__(self, engine, poison: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.poison = engine, poison
        self.backend, self.model_version, self.max_length = engine.backend, engine.model_version, engine.max_length
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def predict(self, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append(list(texts))
        if self.poison in texts:
            raise RuntimeError("the model broke")
        return self.engine.predict(texts)


async def busy(held: Held) -> None:
    """Until the engine thread is inside a call (and holds the next ones in the queue)."""
    await asyncio.to_thread(held.entered.wait, 5)


async def test_windows_waiting_for_the_model_go_in_together_up_to_max_texts(tiny) -> None:  # type: ignore[no-untyped-def]
    held, queue = Held(tiny), EngineQueue(max_texts=5)
    try:
        first = asyncio.create_task(queue.predict(held, ["a"]))
        await busy(held)
        windows = [["b", "c"], ["d", "e"], ["f", "g"]]
        waiting = [asyncio.create_task(queue.predict(held, w)) for w in windows]
        await asyncio.sleep(0.05)
        held.gate.set()
        results = await asyncio.gather(first, *waiting)
    finally:
        await queue.close()
    assert held.calls == [["a"], ["b", "c", "d", "e"], ["f", "g"]]  # merged while the model was busy, at most 5
    for texts, scores in zip([["a"], *windows], results):  # each window gets its own texts' scores, in order
        alone = tiny.predict(texts)
        assert [s.sentiment.probs for s in scores] == [pytest.approx(a.sentiment.probs, abs=1e-5) for a in alone]


async def test_windows_for_another_model_version_are_not_merged(tiny) -> None:  # type: ignore[no-untyped-def]
    old, new = Held(tiny), Held(tiny)
    new.gate.set()
    queue = EngineQueue(max_texts=100)
    try:
        first = asyncio.create_task(queue.predict(old, ["a"]))
        await busy(old)
        waiting = [asyncio.create_task(queue.predict(engine, [text])) for engine, text in ((old, "b"), (new, "c"), (old, "d"))]
        await asyncio.sleep(0.05)
        old.gate.set()
        await asyncio.gather(first, *waiting)
    finally:
        await queue.close()
    assert old.calls == [["a"], ["b"], ["d"]] and new.calls == [["c"]]  # in arrival order, one version per call


async def test_a_failed_call_fails_every_window_in_it_and_the_queue_goes_on(tiny) -> None:  # type: ignore[no-untyped-def]
    held, queue = Held(tiny, poison="poison pill"), EngineQueue(max_texts=100)
    try:
        first = asyncio.create_task(queue.predict(held, ["a"]))
        await busy(held)
        merged = [asyncio.create_task(queue.predict(held, w)) for w in (["b"], ["poison pill"])]
        await asyncio.sleep(0.05)
        held.gate.set()
        assert len(await first) == 1
        for window in merged:
            with pytest.raises(RuntimeError, match="the model broke"):
                await window
        assert len(await queue.predict(held, ["c"])) == 1
    finally:
        await queue.close()


async def test_a_bad_text_in_another_window_fails_only_itself(tiny) -> None:  # type: ignore[no-untyped-def]
    """ScoreStage retries a failed merged call on its own window alone, then text by text."""
    held = Held(tiny, poison="poison pill")
    stage = ScoreStage(held, ScoreCache(CacheSettings(url=None), prefix="t:"), Watchlist.load(), None)

    def window(offset: int, *texts: str):  # type: ignore[no-untyped-def]
        records = [Record(value=f'{{"text": "{t}", "lang": "en"}}'.encode(), key=None, topic="docs", partition=0,
                          offset=offset + n, timestamp_ms=1_764_000_000_000) for n, t in enumerate(texts)]
        return decode(records, max_text_chars=100).accepted

    try:
        first = asyncio.create_task(stage(window(0, "Sony sinks")))
        await busy(held)
        clean = asyncio.create_task(stage(window(10, "Tesla rallies", "Banks slide")))
        poisoned = asyncio.create_task(stage(window(20, "Oil jumps", "poison pill")))
        await asyncio.sleep(0.05)
        held.gate.set()
        results = await asyncio.gather(first, clean, poisoned)
    finally:
        await stage.close()
    assert held.calls[1] == ["Tesla rallies", "Banks slide", "Oil jumps", "poison pill"]  # the merged call that broke
    assert [[a.record.offset for a in r.accepted] for r in results] == [[0], [10, 11], [20]]
    assert [[(j.record.offset, j.reason) for j in r.rejected] for r in results] == [[], [], [(21, "engine_error")]]


def test_max_texts_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_texts"):
        EngineQueue(0)
