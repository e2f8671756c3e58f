"""A queue worked off a slice of time per turn of the event loop, with the loop turning in
between: the storms one poll can hand the loop (thousands of TLS handshakes, hsb.wire.handshakes;
thousands of logons, logoffs and losses, hsb.cp.logons) wait in it past what one turn may hold,
first in, first out. A subclass says what taking an item is (`_take`), what a new turn of the
loop resets (`_turned`), and whether the queue goes on (`_goes_on`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

SLICE_S = 0.002  # seconds of queued items taken per turn of the loop


class SlicedQueue(Generic[T]):
    __slots__ = ("queue", "_loop", "_new_turn", "_slice")

    def __init__(self) -> None:
        self.queue: deque[T] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_turn: asyncio.Handle | None = None  # the callback that marks the next turn
        self._slice: asyncio.Handle | None = None  # the next slice's callback

    def _new_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Another loop (tests): what was queued on the last one is gone with it; a new turn."""
        self.queue.clear()
        self._slice = None
        self._loop = loop
        self._turned()

    def _enqueue(self, item: T, loop: asyncio.AbstractEventLoop, at: int | None = None) -> None:
        """Queue `item` last, or at index `at` (ahead of what is from there on)."""
        if at is None:
            self.queue.append(item)
        else:
            self.queue.insert(at, item)
        if self._slice is None:
            self._slice = loop.call_soon(self._run)

    def _mark_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Something was taken inline this turn: `_turned` runs once the loop turns."""
        if self._new_turn is None:
            self._new_turn = loop.call_soon(self._turned)

    def _turned(self) -> None:
        self._new_turn = None

    def _take(self, item: T) -> None:
        raise NotImplementedError

    def _goes_on(self) -> bool:
        return True

    def _run(self) -> None:
        self._slice = None
        q = self.queue
        until = time.perf_counter() + SLICE_S
        try:
            while q:
                self._take(q.popleft())
                if time.perf_counter() >= until:
                    break
        finally:  # the rest wait for the next slice, whatever became of this one
            if q and self._loop is not None and self._goes_on():
                self._slice = self._loop.call_soon(self._run)
