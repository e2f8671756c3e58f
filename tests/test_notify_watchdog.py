"""systemd's watchdog and hsbd's HA loop: the loop pings it at each pass, and keeps pinging
while one pass waits on the takeover file's storage for as long as those operations may take
(their deadlines: storage_timeout plus the time to move the file), but not past that (a pass
that hangs is what the watchdog is for); and it never sleeps past half of WatchdogSec, whatever
ring_poll_interval says."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host.ha import HA
from hsb.host.states import ESTABLISHED
from hsb.ops.notify import watchdog_every

pytestmark = pytest.mark.timeout(10)


class Pings:
    every = 0.05

    def __init__(self) -> None:
        self.at: list[float] = []

    def tick(self, now: float, force: bool = False) -> None:
        self.at.append(now)


def _ha(cycle_s: float, bulk_s: float) -> HA:
    ha = HA.__new__(HA)

    async def run_cycle() -> str:
        await asyncio.sleep(cycle_s)  # (a storage operation under way, within its deadline)
        return "done"

    ha.run_cycle = run_cycle  # type: ignore[method-assign]
    ha.srv = SimpleNamespace(takeover=SimpleNamespace(store=SimpleNamespace(bulk_timeout=lambda share: bulk_s)))  # type: ignore[assignment]
    return ha


def test_the_watchdog_interval_comes_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_every() is None
    monkeypatch.setenv("WATCHDOG_USEC", str(10_000_000))  # WatchdogSec=10
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_every() == 5.0


async def test_a_pass_waiting_on_storage_is_pinged_within_its_operations_deadlines() -> None:
    """A first batch write of a large file on a slow mount takes seconds (8.5 s at 100,000
    terminals with the default storage_timeout): without pings meanwhile, WatchdogSec=10 killed
    the only active."""
    ha, pings = _ha(cycle_s=0.3, bulk_s=1.0), Pings()
    t0 = time.monotonic()
    assert await ha._cycle_pinged(pings) == "done"  # type: ignore[arg-type]
    assert len(pings.at) >= 5 and max(pings.at) - t0 >= 0.2, pings.at


async def test_a_pass_that_outlasts_every_deadline_is_not_pinged() -> None:
    ha, pings = _ha(cycle_s=0.6, bulk_s=0.05), Pings()  # deadlines end 2 x 0.05 + 0.05 s in
    t0 = time.monotonic()
    assert await ha._cycle_pinged(pings) == "done"  # type: ignore[arg-type]
    assert pings.at and max(pings.at) - t0 < 0.2, [round(t - t0, 3) for t in pings.at]


async def test_a_pass_cancelled_cancels_its_cycle() -> None:
    ha, pings = _ha(cycle_s=30, bulk_s=1.0), Pings()
    started: list[Any] = []
    real = ha.run_cycle

    async def cycle() -> str:
        started.append(asyncio.current_task())
        return await real()

    ha.run_cycle = cycle  # type: ignore[method-assign]
    task = asyncio.ensure_future(ha._cycle_pinged(pings))  # type: ignore[arg-type]
    while not started:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert started[0].cancelled() or started[0].cancelling()


def test_an_established_standby_never_sleeps_past_half_the_watchdog() -> None:
    ha = HA.__new__(HA)
    ha.role, ha.state = "standby", ESTABLISHED
    ha.next_poll = time.monotonic() + 30.0  # ring_poll_interval = 30
    assert ha._idle_wait(None) > 29
    assert ha._idle_wait(5.0) == 5.0
