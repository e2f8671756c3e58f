"""The service's session hooks on hsbd (hsb.host.session_hooks) when a hook that runs in its
caller's task (`run_hook`, a logon) meets the pool's queue of the same terminal: none is lost,
none overtakes another, and the caller's wait ends."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.procs import until
from tests.support.sessionsctl import ctl

pytestmark = pytest.mark.timeout(10)


async def test_hooks_asked_for_while_a_logon_runs_in_its_own_task_run_after_it() -> None:
    """A logon (run_hook, nothing of its terminal queued) runs in the request's task; a close of
    the same terminal asked for meanwhile waits for it and then runs in a worker: dropped, the
    service would never hear that session close."""
    c = ctl()
    gate = asyncio.Event()
    ran: list[str] = []

    async def slow_open(name: str) -> None:
        ran.append(f"open {name}")
        await gate.wait()

    async def close(name: str) -> None:
        ran.append(f"close {name}")

    logon = asyncio.ensure_future(c.run_hook(slow_open, "T1"))
    await until(lambda: ran == ["open T1"])
    c._hook(close, "T1")
    assert ran == ["open T1"]
    gate.set()
    await asyncio.wait_for(logon, 2.0)
    await until(lambda: ran == ["open T1", "close T1"], 3.0, what="the close asked for during the logon")
    await until(lambda: not c.hooks and c.hook_workers == 0, 3.0)


async def test_a_logon_queued_behind_a_terminals_hook_runs_after_it_and_its_caller_goes_on() -> None:
    """run_hook for a terminal whose close still runs in a worker: the logon waits its turn, runs,
    and its caller's wait ends (the session request answers the CP)."""
    c = ctl()
    gate = asyncio.Event()
    ran: list[str] = []

    async def slow_close(name: str) -> None:
        ran.append(f"close {name}")
        await gate.wait()

    async def open_(name: str) -> None:
        ran.append(f"open {name}")

    c._hook(slow_close, "T1")
    await until(lambda: ran == ["close T1"])
    logon = asyncio.ensure_future(c.run_hook(open_, "T1"))
    await asyncio.sleep(0)
    assert ran == ["close T1"] and not logon.done()
    gate.set()
    await asyncio.wait_for(logon, 2.0)
    assert ran == ["close T1", "open T1"]
