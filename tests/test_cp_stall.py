"""The CP judges a host's silence only after it has had the chance to read: when hsbcpd itself
did not run for a while (a storm of connection events, a starved machine), the frames the hosts
sent meanwhile are still unread, and a failover decided on that would be the CP's own fault."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host

pytestmark = pytest.mark.timeout(30)


def _pair(tmp_path: Path) -> tuple[Any, Any, Any]:
    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    return cp, fake_host(cp, "host-a", "active"), fake_host(cp, "host-b", "standby")


async def test_a_tick_after_the_cp_stalled_does_not_call_a_host_silent(tmp_path: Path) -> None:
    cp, a, b = _pair(tmp_path)
    assert cp.active is a and cp.standby is b
    cp.tick()  # the first tick: nothing to judge
    now = time.monotonic()
    a.last_rx = b.last_rx = now - 1.0  # heard nothing for 1 s ...
    cp._last_tick = now - 1.0  # ... because this process did not run for 1 s
    cp.tick()
    assert cp.loss is None and not cp.active_lost_notified and not b.closed, "judged before reading"
    cp.tick()  # the next tick, still silent (their frames really did not come): now it counts
    assert cp.standby is None  # the silent standby is dropped
    assert cp.loss is not None


async def test_a_cp_that_keeps_stalling_still_judges_every_other_tick(tmp_path: Path) -> None:
    cp, a, _b = _pair(tmp_path)
    cp.tick()
    a.last_rx = time.monotonic() - 5.0
    judged = 0
    for _ in range(4):
        cp._last_tick = time.monotonic() - 1.0  # every tick late
        cp.tick()
        judged += cp.loss is not None
    assert cp.loss is not None and judged >= 2


class _HeldJournal:
    """A journal whose records are never durable until `release`."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.waiting: list[Any] = []

    def append(self, payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        self.records.append(payload)
        if done is not None:
            self.waiting.append(done)
        return 1

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for done in waiting:
            done()


async def test_pause_is_answered_only_once_its_record_is_durable(tmp_path: Path) -> None:
    """`hsbctl pause` said done while its record was not durable (a failing journal, a crash in
    the commit's window) was lost by a restart, and automatic failover came back on in the middle
    of a maintenance: the answer waits for the record."""
    cp, _a, _b = _pair(tmp_path)
    j = cp.journal = _HeldJournal()
    said: list[str] = []
    cp.set_paused(True, "test", said.append)
    assert cp.paused and j.records == [["p", True]] and said == []
    cp.set_paused(True, "test", said.append)  # again while the first is on its way: waits too
    assert said == []
    j.release()
    assert said[0].startswith("paused") and said[1] == "already paused"
    cp.set_paused(False, "test", said.append)
    assert len(said) == 2
    j.release()
    assert said[2].startswith("resumed")
