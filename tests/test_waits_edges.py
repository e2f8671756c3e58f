"""hsb.waits.event_within: set in time, not in time, no bound, and a cancellation that comes in
the turn the event is set (the reason it is not asyncio.wait_for)."""

from __future__ import annotations

import asyncio

import pytest

from hsb.waits import event_within


async def test_an_event_set_in_time_is_true_and_one_never_set_is_false_after_the_timeout() -> None:
    e = asyncio.Event()
    asyncio.get_running_loop().call_soon(e.set)
    assert await asyncio.wait_for(event_within(e, 5.0), 10) is True
    assert await asyncio.wait_for(event_within(asyncio.Event(), 0.01), 5) is False


async def test_no_bound_waits_for_the_event() -> None:
    e = asyncio.Event()
    waiter = asyncio.create_task(event_within(e, None))
    for _ in range(3):
        await asyncio.sleep(0)  # (turns of the loop: nothing to wait for but the event)
    assert not waiter.done()
    e.set()
    assert await asyncio.wait_for(waiter, 5) is True


async def test_a_cancellation_in_the_turn_the_event_is_set_is_kept() -> None:
    e = asyncio.Event()
    started = asyncio.Event()

    async def waits() -> bool:
        started.set()
        return await event_within(e, 5.0)

    waiter = asyncio.create_task(waits())
    await started.wait()
    e.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
