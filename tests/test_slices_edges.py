"""hsb.slices.SlicedQueue: first in, first out, a slice of time per turn of the loop with the loop
turning in between, nothing scheduled once the queue is empty, an item put ahead, and a new loop
starting from an empty queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from hsb import slices


class Recorder(slices.SlicedQueue[tuple[str, float]]):
    """Takes ("name", seconds): records the name, busy for that long (no sleep: a slice is CPU time)."""

    __slots__ = ("taken", "turns")

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[str] = []
        self.turns = 0

    def _take(self, item: tuple[str, float]) -> None:
        name, busy = item
        self.taken.append(name)
        until = time.perf_counter() + busy
        while time.perf_counter() < until:
            pass

    def _turned(self) -> None:
        super()._turned()
        self.turns += 1


async def drained(q: Recorder, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(q.taken) < n:
        assert time.monotonic() < deadline, f"only {q.taken} taken"
        await asyncio.sleep(0)


async def test_quick_items_go_in_one_slice_and_slow_ones_one_a_turn_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    q = Recorder()
    q._new_loop(loop)
    monkeypatch.setattr(slices, "SLICE_S", 1.0)  # (a slice no busy machine cuts short)
    for i in range(4):
        q._enqueue((f"quick{i}", 0.0), loop)
    loop.call_soon(q.taken.append, "turn")  # runs once the loop turns
    await drained(q, 5)
    assert q.taken == ["quick0", "quick1", "quick2", "quick3", "turn"]

    q.taken.clear()
    monkeypatch.setattr(slices, "SLICE_S", 0.002)
    for i in range(3):
        q._enqueue((f"slow{i}", 0.004), loop)  # each longer than a slice
    loop.call_soon(q.taken.append, "turn")
    await drained(q, 4)
    assert q.taken == ["slow0", "turn", "slow1", "slow2"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert q._slice is None and not q.queue, "an empty queue keeps nothing scheduled"

    q.taken.clear()
    q._enqueue(("later", 0.0), loop)  # a queue that ran dry takes the next item as the first
    await drained(q, 1)
    assert q.taken == ["later"]


async def test_an_item_put_at_the_head_goes_first() -> None:
    loop = asyncio.get_running_loop()
    q = Recorder()
    q._new_loop(loop)
    q._enqueue(("a", 0.0), loop)
    q._enqueue(("b", 0.0), loop)
    q._enqueue(("first", 0.0), loop, at=0)
    await drained(q, 3)
    assert q.taken == ["first", "a", "b"]


async def test_a_turn_is_marked_once_and_again_after_the_loop_turned() -> None:
    loop = asyncio.get_running_loop()
    q = Recorder()
    q._new_loop(loop)
    assert q.turns == 1
    q._mark_turn(loop)
    q._mark_turn(loop)
    for _ in range(3):
        await asyncio.sleep(0)
    assert q.turns == 2
    q._mark_turn(loop)
    for _ in range(3):
        await asyncio.sleep(0)
    assert q.turns == 3


def test_a_new_loop_drops_what_was_queued_on_the_last_and_takes_its_own() -> None:
    q = Recorder()
    old = asyncio.new_event_loop()
    try:
        q._new_loop(old)
        q._enqueue(("gone", 0.0), old)  # the old loop never runs it
    finally:
        old.close()

    async def on_new() -> None:
        loop = asyncio.get_running_loop()
        q._new_loop(loop)
        q._enqueue(("mine", 0.0), loop)
        await drained(q, 1)

    asyncio.run(on_new())
    assert q.taken == ["mine"]
