"""The log's throttle of per-connection warnings (hsb/logs.py: Throttle; docs/operations.md, the
`protocol_error` row), each test naming a behaviour that a mutation audit found no test for: the
burst and the rate as documented (100, then 10 a second), a steady flood still written at the
rate (the lines dropped keep the bucket's refill), events outside PER_CONNECTION never held
however many, and the bucket on the monotonic clock.

The audit (session 64): 30 hand-made mutants of Throttle and its place in setup(); 22 were killed
by tests/test_log_throttle.py; 6 are killed here; 2 are equivalent (a bucket's first time taken
from 0 rather than now: its tokens start full and are capped at the burst either way, the
monotonic clock never being negative; a zero left in the count of lines left out: pop gives 0
either way).
"""

from __future__ import annotations

import time

import pytest
import structlog

from hsb.logs import BURST, PER_CONNECTION, RATE, Throttle

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def written(th: Throttle, name: str) -> dict[str, object] | None:
    try:
        return th(None, "warning", {"event": name})
    except structlog.DropEvent:
        return None


def test_the_burst_and_the_rate_are_the_documented_ones() -> None:
    """docs/operations.md: a burst of 100, then at most 10 a second (mutants: 101, 99, 11)."""
    assert (BURST, RATE) == (100, 10.0)
    clock = Clock()
    th = Throttle(clock=clock)
    assert sum(written(th, "auth_failed") is not None for _ in range(500)) == 100
    clock.t += 1.0
    assert sum(written(th, "auth_failed") is not None for _ in range(500)) == 10


def test_a_steady_flood_is_still_written_at_the_rate() -> None:
    """A client provoking a warning every 10 ms for 10 s, past the burst: the lines dropped
    meanwhile keep the refill they saw, so one in ten is written, 10 a second, each saying the 9
    left out before it (mutant: a dropped line's tokens not kept, which held every line back for
    as long as the flood lasted)."""
    clock = Clock()
    th = Throttle(burst=5, rate=10.0, clock=clock)
    for _ in range(5):
        assert written(th, "protocol_error") is not None
    out = []
    for _ in range(1000):
        clock.t += 0.01
        if (line := written(th, "protocol_error")) is not None:
            out.append(line)
    assert 95 <= len(out) <= 101, len(out)
    assert all(line.get("left_out") in (8, 9, 10) for line in out), out[:5]


def test_other_events_are_never_held() -> None:
    """An event outside PER_CONNECTION is written every time, however many come at once
    (mutant: the PER_CONNECTION test dropped, every event in a bucket of its own)."""
    th = Throttle(burst=5, rate=1.0, clock=Clock())
    assert "journal_failing" not in PER_CONNECTION
    assert all(written(th, "journal_failing") == {"event": "journal_failing"} for _ in range(1000))


def test_the_buckets_go_by_the_monotonic_clock() -> None:
    """A wall clock stepped back (NTP, an operator) would hold every throttled line for as long
    as it stepped; the daemons' Throttle reads the monotonic clock (mutant: time.time)."""
    assert Throttle().clock is time.monotonic
