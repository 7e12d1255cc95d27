"""InOrder: the score agent's windows run concurrently but finish (send, ack) in the order they were taken."""

from __future__ import annotations

import asyncio

import pytest

from worker.entrypoints.in_order import InOrder


class Windows:
    """Windows whose work ends when the test says, recording the order they finish in."""

    def __init__(self, n: int) -> None:
        self.release = [asyncio.Event() for _ in range(n)]
        self.finished: list[int] = []

    async def work(self, i: int, fail: bool = False) -> int:
        await self.release[i].wait()
        if fail:
            raise RuntimeError(f"window {i} broke")
        return i

    async def finish(self, i: int) -> None:
        self.finished.append(i)


async def test_windows_finish_in_the_order_they_were_started_whatever_order_their_work_ends_in() -> None:
    windows, in_order = Windows(3), InOrder(4)
    for i in range(3):
        await in_order.start(windows.work(i), windows.finish)
    for i in (2, 1):
        windows.release[i].set()
        await asyncio.sleep(0.01)
    assert windows.finished == []  # 1 and 2 are scored, but 0 is not: nothing is sent or acked yet
    windows.release[0].set()
    await in_order.drain()
    assert windows.finished == [0, 1, 2]


async def test_start_waits_while_the_limit_of_windows_is_unfinished() -> None:
    windows, in_order = Windows(3), InOrder(2)
    await in_order.start(windows.work(0), windows.finish)
    second = asyncio.create_task(in_order.start(windows.work(1), windows.finish))
    await asyncio.sleep(0.02)
    assert not second.done()  # two unfinished: the agent takes no third window
    windows.release[0].set()
    await asyncio.wait_for(second, 1)
    assert windows.finished == [0]
    windows.release[1].set()
    await in_order.drain()
    assert windows.finished == [0, 1]


async def test_a_limit_of_one_is_one_window_at_a_time() -> None:
    windows, in_order = Windows(1), InOrder(1)
    windows.release[0].set()
    await in_order.start(windows.work(0), windows.finish)
    assert windows.finished == [0]  # finished before start returned


async def test_a_failed_window_raises_in_the_agent_and_the_windows_after_it_send_nothing() -> None:
    windows, in_order = Windows(2), InOrder(3)
    await in_order.start(windows.work(0, fail=True), windows.finish)
    await in_order.start(windows.work(1), windows.finish)
    windows.release[1].set()
    windows.release[0].set()
    with pytest.raises(RuntimeError, match="window 0 broke"):
        await in_order.drain()
    with pytest.raises(RuntimeError, match="window 0 broke"):
        await in_order.drain()  # window 1 waited on window 0, and fails with it
    assert windows.finished == []


async def test_cancel_stops_unfinished_windows_before_they_send_or_ack() -> None:
    windows, in_order = Windows(2), InOrder(3)
    await in_order.start(windows.work(0), windows.finish)
    await in_order.start(windows.work(1), windows.finish)
    await in_order.cancel()
    for release in windows.release:
        release.set()
    await asyncio.sleep(0.01)
    assert windows.finished == []


def test_the_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="limit"):
        InOrder(0)
