"""Pick the event loop: uvloop (the daemons always run on it)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


# The event loop gives up the GIL around every poll and must win it back; a CPU-bound helper
# thread (the takeover file's batch encode on its storage thread) keeps it for up to the
# switch interval each time (default 5 ms), and that wait repeats on every loop iteration.
SWITCH_INTERVAL = 0.0005


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a uvloop event loop."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
