"""The processes' garbage-collector policy: no full-collection pauses while serving.

With 10,000 terminals a daemon holds a few hundred thousand long-lived container
objects (terminal state, connections, sessions, decoders). CPython's full
collection walks all of them with the event loop stopped: 40–140 ms pauses,
measured in hsbcpd and hsbd during a switchover at 10,000 terminals, each one a
stretch in which no terminal is served. `apply()` (called once a process has
started) collects everything, freezes what is left (`gc.freeze`) and turns the
automatic full collection off; the young generations are still collected as
usual, so short-lived cycles are reclaimed within milliseconds.

Objects that live long are still freed by reference counting; only a reference
cycle that turns into garbage after it has grown old is never reclaimed. That is
why connections break their own cycles when they close (`FramedProtocol`), and
tests/test_gc_cycles.py (the CP) and tests/test_gc_cycles_host.py (hsbd) check that
serving, switching, failing over and closing leave no cyclic garbage behind.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

NO_FULL_COLLECTION = 2**31 - 1  # gen1 collections between full collections: never


def apply() -> None:
    """Collect everything once now, freeze it, and leave only young collections on."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_COLLECTION)


@contextmanager
def paused() -> Iterator[None]:
    """No collections at all while a large structure is built in one go, none of it cyclic
    garbage: the CP's journal read back at its start (100,000 held messages are 2-3 full
    collections, half of the recovery time measured here), the takeover file's batch read
    (100,000 entries make 300,000 objects)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
