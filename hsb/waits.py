"""A bounded wait on an asyncio.Event, in one place.

Not `asyncio.wait_for`: on Python 3.11 it returns the event's result and loses a cancellation
that arrives in the turn the event is set, so a loop cancelled at its stop ran on (HA.run, the
replies' drain before a handover). `asyncio.timeout` keeps the cancellation.
"""

from __future__ import annotations

import asyncio


async def event_within(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for `event`, `timeout` seconds at most (None: no bound); True if it was set in time."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
