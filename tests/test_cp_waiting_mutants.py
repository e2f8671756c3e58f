"""A CP waiting to take over (hsb/cp/waiting.py), from a mutation audit of the module: a
SIGHUP that comes while the config check of the one before is still under way waits for it, and
is checked after it, never two checks at once. (Its other cases: tests/test_cp_waiting_edges.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.procs import until
from tests.test_cp_waiting_edges import takeover_wait, waiting_cp, waits_on

pytestmark = pytest.mark.timeout(30)


async def test_a_sighup_during_a_config_check_is_checked_after_it_not_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP while waiting starts a config check; a second one while that check still runs
    (a slow read of the file) starts no second check beside it: once the first ends, the second
    SIGHUP is checked, one check at a time."""
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.held = False
    release = asyncio.Event()
    running: list[int] = []
    most = [0]
    done = [0]

    async def slow_check() -> None:
        running.append(1)
        most[0] = max(most[0], len(running))
        await release.wait()
        running.pop()
        done[0] += 1

    monkeypatch.setattr(s, "_check_config", slow_check)
    async with takeover_wait(s) as task:
        await waits_on(s, j, task, polls=2)
        s._sighup()
        await until(lambda: len(running) == 1, timeout=5)
        s._sighup()
        await waits_on(s, j, task, polls=4)  # (the chores' turns go on meanwhile)
        assert most[0] == 1 and done[0] == 0
        release.set()
        await until(lambda: done[0] == 2, timeout=5)
    assert most[0] == 1
