"""A CP taking its journal over, in process (docs/cp-journal.md "Generations"): the file work
runs off the event loop (the loop answers meanwhile, the first looks at the storage too),
systemd's watchdog is pinged while each step keeps to its bound, and a step past its bound
stops the takeover's beat.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal.generation import gen_name
from hsb.wire.client import request
from tests.support.procs import SECRET, addr, cp_config, until
from tests.support.waitingcp import held_recovery, waiting_cp_under_systemd, watchdog_pings

pytestmark = pytest.mark.timeout(90)


async def test_the_loop_answers_while_a_cp_takes_its_journal_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the journal over reads it back and writes the snapshot: seconds for a journal that
    holds much. It ran on the event loop, so /health, status and the watchdog went unanswered
    meanwhile (keepalived's track script failed and took the address away in the middle of the
    takeover). The file work runs on a thread: the loop answers."""

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    entered, release = held_recovery(monkeypatch, 3)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(s.startup())
    try:
        assert await loop.run_in_executor(None, entered.wait, 10)
        assert not release.is_set()
        t0 = loop.time()
        await asyncio.sleep(0.05)
        assert loop.time() - t0 < 0.5, "the loop did not run while the journal was read"
        st = (await request(*addr(s.bound["admin"]), SECRET, {"t": "status"}, timeout=2))["data"]
        assert st["cp_state"] == "taking_over", st
        assert not release.is_set(), "answered only after the recovery"
        assert s._healthy() and s.takeover_step is not None and s.takeover_step[0] == "recovery"
        s.takeover_step_s = 0.2  # a step past its bound (a hung mount): /health fails, the watchdog pings stop
        await until(lambda: not s._healthy(), timeout=5)
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None and s.took_over["generation"] == 1
    finally:
        release.set()
        if not task.done():
            task.cancel()
        await s.shutdown()


def _taken_over_or_not(s: Any, task: Any, release: Any, sd: Any) -> None:
    """The end of a test of a takeover held on a thread: let it go, cancel what is left, close."""
    release.set()
    if not task.done():
        task.cancel()
    sd.close()
    if s.cp is not None:
        s.cp.journal.close()


async def test_a_cp_taking_its_journal_over_pings_the_watchdog_while_each_step_keeps_to_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal read back for seconds (a big one) went unpinged, and systemd (WatchdogSec)
    killed the CP in the middle of its takeover; a step past its bound (a hung mount) stops the
    pings, as /health fails then."""

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    entered, release = held_recovery(monkeypatch, 10)

    def pings() -> int:
        return watchdog_pings(sd)

    task = asyncio.ensure_future(s.take_over("woken"))
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        assert s.takeover_step is not None and s.takeover_step[0] == "recovery" and s.takeover_step[2] > 0  # (its bytes' time)
        pings()
        seen = [0]
        await until(lambda: (seen.__setitem__(0, seen[0] + pings()), seen[0] >= 2)[1], timeout=5)  # pinged while the journal is read
        s.takeover_step_s = 0.1  # past its bound now
        await until(lambda: not s._takeover_on_time(), timeout=5)  # (no turn of the ping task after this pings)
        pings()
        await asyncio.sleep(0.6)  # a window of twelve of WatchdogSec's half intervals: not one ping in it
        assert pings() == 0, "pinged while a step hung"
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None
    finally:
        _taken_over_or_not(s, task, release, sd)


async def test_a_takeovers_first_looks_at_the_storage_run_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover asks first whether the journal is there and how its storage is mounted: on
    the event loop, a hung mount stopped the loop there (no /health, no status, no watchdog ping
    for keepalived and systemd to act on). They run on the takeover's timed thread steps now."""
    import threading

    from hsb.cp import taking_over

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    entered, release = threading.Event(), threading.Event()

    def hung(path: str) -> str | None:
        entered.set()
        release.wait(10)
        return None

    monkeypatch.setattr(taking_over, "nfs_fencing_problem", hung)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(s.take_over("woken"))
    try:
        assert await loop.run_in_executor(None, entered.wait, 10)
        t0 = loop.time()
        await asyncio.sleep(0.05)
        assert loop.time() - t0 < 0.5, "the loop did not run while the storage was asked"
        assert s.takeover_step is not None and s.takeover_step[0] == "mount options"
        s.takeover_step_s = 0.1  # past its bound: the watchdog's pings stop, as for any hung step
        await until(lambda: not s._takeover_on_time(), timeout=5)
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None
    finally:
        _taken_over_or_not(s, task, release, sd)


async def test_a_takeover_step_past_its_bound_stops_the_takeovers_beat(tmp_path: Path) -> None:
    """A step of the takeover past its bound fails /health and stops the watchdog's pings, so
    keepalived moves the address: the takeover's beat stops too, or the CP woken on the other
    machine would see a live one and defer for ever, nobody serving."""
    import time as _time

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    assert s.gens is not None
    gen = s.gens.take()
    path = journal / gen_name(gen)
    os.utime(path, (0, 0))
    s.takeover_step, s.takeover_step_s = ("recovery", _time.monotonic() - 10, 0.0), 1.0  # hung past its bound
    big = 160 * 1024 * 1024  # a journal of 160 MiB gets 10 s more to be read back: not past its bound yet
    assert not s._takeover_on_time()
    s.takeover_step = ("recovery", _time.monotonic() - 10, big / srv.BULK_RATE)
    assert s._takeover_on_time()
    s.takeover_step = ("recovery", _time.monotonic() - 10, 0.0)
    task = asyncio.ensure_future(s._beat_while_taking_over(gen))
    try:
        await asyncio.sleep(0.4)  # four beats' time: a window in which none may come
        assert os.stat(path).st_mtime == 0, "beat while a step hung"
        s.takeover_step = None  # the step ended: beats again
        await until(lambda: os.stat(path).st_mtime > 0, timeout=5)
    finally:
        task.cancel()
