"""hsbcpd alone, a real process on real sockets, driven by test host-link clients and
terminals (tests/test_cp.py and the files split from it): the CP they share (`lone_cp`, each
file's `cp` fixture: 20 terminals and one that cannot have a standby session, held_bound 8), a
pair of hosts, a terminal logged on with its session open, a failover, and its status and
session table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from hsb.wire.client import cp_sessions, request
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.procs import SECRET, Proc, addr, start_cp

ATTRS = {"protocol": "hsb1", "codepage": "utf-8"}


def lone_cp(tmp_path: Path) -> Iterator[Proc]:
    """The CP of each file's `cp` fixture, stopped at the end."""
    proc = start_cp(tmp_path / "cp", terminals=20, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=8)
    yield proc
    proc.stop()


async def pair(cp: Proc) -> tuple[FakeHost, FakeHost]:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    return a, b


async def logon(cp: Proc, name: str) -> FakeTerminal:
    t = await FakeTerminal.connect(cp.info["terminal"], name)
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    return t


async def fail_over(a: FakeHost, b: FakeHost) -> dict[str, Any]:
    """The active's host link closes; the standby asks and is granted. Returns the grant."""
    await a.close()
    await b.wait(lambda m: m["t"] == "active_lost")
    mark = len(b.inbox)
    b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
    g = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"), start=mark)
    assert g["t"] == "switch_granted", g
    return g


async def status(cp: Proc) -> dict[str, Any]:
    h, p = addr(cp.info["admin"])
    return cast(dict[str, Any], (await request(h, p, SECRET, {"t": "status"}))["data"])


async def wait_status(cp: Proc, cond: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond(st := await status(cp)):
        assert asyncio.get_running_loop().time() < deadline, f"status never matched: {st}"
        await asyncio.sleep(0.02)
    return st


async def sessions(cp: Proc) -> dict[str, Any]:
    h, p = addr(cp.info["admin"])
    return await cp_sessions(h, p, SECRET)
