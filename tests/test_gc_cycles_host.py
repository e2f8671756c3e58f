"""hsbd's objects leave no cyclic garbage behind (hsb/gcpolicy.py relies on it).

The hsbd counterpart of tests/test_gc_cycles.py. An in-process hsbcpd and two in-process
hsbd (HostServer, driven as `serve()` drives it, minus signal handlers and gcpolicy; no
module-level state stops two hosts sharing a process) on real loopback sockets and one real
takeover file go, with the collector off, through: standby establishment, logons and
traffic (ring writes and reads), admin requests, a peer-link drop and its restoration, a
planned switchover and re-establishment, logoffs and disconnects, and a failover with
re-delivery after the active dies. Then every object the collector finds unreachable is
checked for hsbd's own, while the surviving host still runs.
"""

from __future__ import annotations

import asyncio
import time
import types
from pathlib import Path
from typing import Any

import pytest

from hsb.config import load
from hsb.cp.config import CPConfig
from hsb.cp.server import CPServer
from hsb.host import cplink, peer
from hsb.host.server import HostServer
from hsb.service.builtin import EchoService
from hsb.wire.client import FrameStream, request
from tests.support.cycles import collector_off
from tests.support.hostclient import FakeTerminal
from tests.support.inproc import start_pair, stop_pair
from tests.support.procs import SECRET, addr, cp_config


class HostFrameStream(FrameStream):
    """hsbd's own client streams (CP link, peer sending side); tests and hsbctl use FrameStream too."""


class HoldService(EchoService):
    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        if data == "hold" and not redelivered:
            await asyncio.Event().wait()  # in progress when the active dies: re-delivered to the other
        return data


# hsbd's objects: instances of its classes (protocols, links, HA, takeover I/O), its client
# streams (HostFrameStream, patched in below), frames and coroutines of its code, and
# tracebacks of exceptions caught in it (whose own frame is alive; the rest of such a cycle is
# asyncio's). The in-process CP's objects (hsb.cp; tests/test_gc_cycles.py checks those) and
# the test clients' (FakeTerminal, request(): plain FrameStreams, tests.* code) do not count.
HOST_MODULES = ("hsb.host.", "hsb.takeover.", "hsb.wire.conn", "hsb.wire.authlink")
HOST_CODE = ("/hsb/host/", "/hsb/takeover/")


def host_side(o: object) -> str | None:
    """What `o` is if it is hsbd's, else None."""
    if isinstance(o, HostFrameStream) or (getattr(type(o), "__module__", "") or "").startswith(HOST_MODULES):
        return type(o).__qualname__
    f = o.tb_frame if isinstance(o, types.TracebackType) else o  # an exception caught in hsbd code
    code = getattr(f, "f_code", None) or getattr(f, "cr_code", None)
    if isinstance(code, types.CodeType) and any(d in code.co_filename for d in HOST_CODE):
        return f"{type(o).__name__} of {code.co_qualname}"
    return None


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def established(*hosts: HostServer, since: float = 0.0) -> bool:
    return all(h.ha.state == "established" and (h.ha.established_since or 0) > since and h.peer.up for h in hosts)


async def scenario(tmp_path: Path, cp: CPServer, hosts: dict[str, HostServer], tasks: list[asyncio.Task[Any]]) -> None:
    await start_pair(tmp_path, cp, hosts, tasks, records=64, service=HoldService)
    a, b = hosts["host-a"], hosts["host-b"]
    await until(lambda: established(a, b), "hot standby")
    terms = []
    for i in range(1, 11):
        t = await FakeTerminal.connect(cp.bound["terminal"], f"T{i:05d}")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        t.send({"t": "msg", "id": 1, "data": "x"})
        terms.append(t)
    for t in terms:
        await t.wait(lambda m: m["t"] == "reply")
    await until(lambda: b.sessions.counts()["standby_sessions"] == 10 and not b.sessions_ctl.pending_standby, "standby sessions via the ring")
    assert (await request(*addr(a.bound["admin"]), SECRET, {"t": "status"}))["data"]["established"]
    # the peer link drops (both directions) and comes back; the standby keeps following the ring
    t0, old = time.time(), (a.peer.inbound, b.peer.inbound)
    for conn in old:
        assert conn is not None
        conn.abort()
    await until(lambda: established(a, since=t0) and established(b) and b.peer.inbound not in (None, *old), "peer link back")
    # planned switchover a -> b; a turns standby and is established again
    assert (await request(*addr(a.bound["admin"]), SECRET, {"t": "switchover"}))["ok"]
    await until(lambda: b.ha.role == "active" and a.ha.role == "standby" and established(a, b), "planned switchover")
    for t in terms:
        t.send({"t": "msg", "id": 2, "data": "y"})
        await t.wait(lambda m: m["t"] == "reply" and m["id"] == 2)
    for t in terms[:3]:
        t.send({"t": "bye"})
    for t in terms[3:6]:
        await t.close()
    await until(lambda: a.sessions.counts()["standby_sessions"] == 4, "logoffs reach the standby")
    # failover: the active dies with messages in progress; host-a takes over and re-delivers them
    for t in terms[6:]:
        t.send({"t": "msg", "id": 3, "data": "hold"})
    await until(lambda: b.delivery.in_flight == 4, "messages in progress on host-b")
    tasks[2].cancel()  # host-b's HA loop
    await b.close()
    b.delivery.cancel()
    hosts["dead"] = hosts.pop("host-b")  # still referenced: only what it dropped counts
    for t in terms[6:]:
        await t.wait(lambda m: m["t"] == "reply" and m["id"] == 3)
    # (the grant serves at once, from the link; the HA loop takes the role on its next cycle,
    # which a loaded machine may run after the replies went)
    await until(lambda: a.ha.role == "active", "host-a's HA loop on the grant")
    core = cp.cp
    assert core is not None
    assert core.counters["redelivered"] == 4
    for t in terms[:3] + terms[6:]:
        await t.close()
    await until(lambda: a.sessions.counts()["active_sessions"] == 0 and core.connected == 0, "logoffs on host-a")


@pytest.mark.timeout(60)
async def test_serving_switching_and_failing_over_leave_no_host_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cplink, "FrameStream", HostFrameStream)
    monkeypatch.setattr(peer, "FrameStream", HostFrameStream)
    cp = CPServer(load(cp_config(tmp_path, terminals=10, host_timeout=0.5), CPConfig), SECRET)
    hosts: dict[str, HostServer] = {}
    tasks: list[asyncio.Task[Any]] = []
    try:
        with collector_off() as garbage:
            await scenario(tmp_path, cp, hosts, tasks)
            # host-a still runs, dead host-b is still held: only what they dropped counts
            leaked = sorted({k for k in map(host_side, garbage()) if k})
    finally:
        await stop_pair(cp, hosts, tasks, keep=("dead",))
    assert cp.cp is not None
    assert cp.cp.counters["switchovers"] == 1 and cp.cp.counters["failovers"] == 1
    assert not leaked, f"cyclic garbage from hsbd: {leaked}"


@pytest.mark.timeout(30)
async def test_failing_storage_operations_leave_no_cycles(tmp_path: Path) -> None:
    """While storage fails, every failed operation must be freed by reference counting: the
    ring writer retries for as long as the storage fails, holding each error meanwhile."""
    from hsb.takeover.errors import FileMissing
    from hsb.takeover.store import TakeoverStore

    store = TakeoverStore(str(tmp_path / "missing" / "takeover.dat"), terminals=10)
    try:
        with collector_off() as garbage:
            for _ in range(5):
                with pytest.raises(FileMissing):
                    await store.read_header()  # the file's folder does not exist: every read fails
            leaked = sorted({k for k in map(host_side, garbage()) if k})
    finally:
        await store.close()
    assert not leaked, f"cyclic garbage from a failed storage operation: {leaked}"
