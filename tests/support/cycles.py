"""The cyclic garbage collector as the daemons run it (hsb/gcpolicy.py: nothing old is ever
collected), for the tests that look for reference cycles a scenario leaves behind."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def collector_off() -> Iterator[Callable[[], list[object]]]:
    """Collector off for the block; the yielded `garbage()` collects once and returns every
    object it found unreachable (kept, not freed, so the test can see what they are)."""

    def garbage() -> list[object]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return list(gc.garbage)

    gc.collect()
    # everything older than the block stays reachable through this list: what an earlier test
    # left (held until now by something the block lets go of) cannot show as the block's garbage
    older = gc.get_objects()
    gc.disable()
    try:
        yield garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del older
        gc.enable()
