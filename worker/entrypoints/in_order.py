"""Windows of events worked on concurrently and finished in the order they were taken.

The score agent takes a window, starts it, and takes the next while the model scores the first:
the model's queue (worker/stages/engine_queue.py) then always has work when it frees up. Each
window's outputs are sent and its events acked only after the window before it has finished, so
the outputs keep the input's order and the acks move forward without gaps, as with one window at
a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class InOrder:
    """limit: windows started and not yet finished at most; 1 works on one window at a time."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._windows: deque[asyncio.Task[None]] = deque()
        self._work: set[asyncio.Future[Any]] = set()

    async def start(self, work: Awaitable[T], finish: Callable[[T], Awaitable[Any]]) -> None:
        """Start `work`; `finish(its result)` runs once every earlier window has finished. Returns when fewer
        than `limit` windows are left unfinished, and raises what a finished window raised."""
        previous = self._windows[-1] if self._windows else None
        started = asyncio.ensure_future(work)  # starts now, whatever the windows before it are doing
        self._work.add(started)
        started.add_done_callback(self._work.discard)
        self._windows.append(asyncio.ensure_future(self._run(started, finish, previous)))
        while self._windows and self._windows[0].done():
            await self._windows.popleft()  # raises the window's exception, as a window run in the loop would
        while len(self._windows) >= self.limit:
            await self._windows.popleft()

    @staticmethod
    async def _run(work: asyncio.Future[T], finish: Callable[[T], Awaitable[Any]], previous: asyncio.Task[None] | None) -> None:
        result = await work
        if previous is not None:
            await previous  # an earlier window that failed stops this one before its outputs
        await finish(result)

    async def drain(self) -> None:
        """Finish every started window."""
        while self._windows:
            await self._windows.popleft()

    async def cancel(self) -> None:
        """Stop the unfinished windows (shutdown): their events stay unacked and are read again."""
        for task in (*self._work, *self._windows):
            task.cancel()
        await asyncio.gather(*self._work, *self._windows, return_exceptions=True)
        self._windows.clear()
