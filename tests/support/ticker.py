"""A task that counts the event loop's turns: a test's proof that the loop kept running while
something waited (a stop awaiting a hung thread, a walk in slices)."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Ticker:
    """`async with Ticker() as t:` … `t.ticks`: how often a 1 ms timer fired meanwhile."""

    def __init__(self, every: float = 0.001) -> None:
        self.every = every
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
