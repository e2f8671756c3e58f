"""hsbcpd's objects leave no cyclic garbage behind (hsb/gcpolicy.py relies on it).

The daemons turn CPython's full collections off (they paused service for 40–140 ms at
10,000 terminals); a reference cycle that becomes garbage after it has grown old would
then never be reclaimed. This runs the CP in this process on real loopback sockets
through logons, traffic, a failover with re-delivery, a bad
frame and disconnects, with the collector off, then looks for CP-side objects among
everything the collector finds unreachable.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from hsb.config import load
from hsb.cp.config import CPConfig
from hsb.cp.server import CPServer
from tests.support.cycles import collector_off
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.procs import SECRET, cp_config

ATTRS = {"protocol": "hsb1"}
# The CP's own objects; a Decoder is shared with the test clients' FrameStreams (whose
# cycles are not the daemon's business), so it counts through its ProtocolError or owner.
CP_MODULES = ("hsb.cp.", "hsb.wire.conn", "hsb.wire.authlink")


async def lost_everywhere(timeout: float = 5.0) -> None:
    """Until every CP-side connection has had its connection_lost (which leaves it a Decoder of
    max_frame 1): before that its objects are still reachable, and would not show as garbage."""
    import gc
    import time

    from hsb.wire.conn import FramedProtocol

    loop = asyncio.get_running_loop()  # (this test's: other tests' connections are not its business)
    deadline = time.monotonic() + timeout
    while any(isinstance(o, FramedProtocol) and getattr(o, "_loop", None) is loop and o.decoder.max_frame != 1 for o in gc.get_objects()):
        assert time.monotonic() < deadline, "a CP connection never had its connection_lost"
        await asyncio.sleep(0.01)


def cp_side(o: object) -> bool:
    mod = getattr(type(o), "__module__", "") or ""
    return mod.startswith(CP_MODULES) or type(o).__name__ == "ProtocolError"


async def scenario(tmp_path: Path) -> CPServer:
    cfg = load(cp_config(tmp_path, terminals=12, host_timeout=0.5, held_bound=8), CPConfig)
    srv = CPServer(cfg, SECRET)
    await srv.startup()
    ticker = asyncio.ensure_future(srv.tick_loop())
    try:
        a = await FakeHost.connect(srv.bound["host"], "host-a", "active")
        a.auto_open = ATTRS
        b = await FakeHost.connect(srv.bound["host"], "host-b", "standby")
        terms = []
        for i in range(1, 11):
            t = await FakeTerminal.connect(srv.bound["terminal"], f"T{i:05d}")
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            b.send({"t": "open", "terminal": t.name, "kind": "standby", "attrs": ATTRS})
            terms.append(t)
        await b.wait_count(lambda m: m["t"] == "opened", 10)
        for t in terms:
            t.send({"t": "msg", "id": 1, "data": "x"})
        await a.wait_count(lambda m: m["t"] == "deliver", 10)
        for t in terms[:5]:
            a.send({"t": "reply", "terminal": t.name, "id": 1, "data": "r", "epoch": a.epoch})
        for t in terms[:5]:
            await t.wait(lambda m: m["t"] == "reply")
        # failover: the rest is re-delivered to host-b and answered there
        await a.close()
        await b.wait(lambda m: m["t"] == "active_lost")
        b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
        await b.wait(lambda m: m["t"] == "switch_granted")
        for m in await b.wait_count(lambda m: m["t"] == "deliver", 5):
            b.send({"t": "reply", "terminal": m["terminal"], "id": m["id"], "data": "r", "epoch": b.epoch})
        for t in terms[5:]:
            await t.wait(lambda m: m["t"] == "reply")
        for t in terms:
            await t.wait(lambda m: m["t"] == "switched")
        # a bad frame closes one terminal; the others log off or drop
        terms[0].fs.writer.write(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        await terms[0].wait_closed()
        for t in terms[1:5]:
            t.send({"t": "bye"})
        for t in terms[1:]:
            await t.close()
        await b.close()
        deadline = asyncio.get_running_loop().time() + 10
        assert srv.cp is not None
        while (srv.cp.connected or srv.cp.active is not None and not srv.cp.active.closed) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert srv.cp.connected == 0
    finally:
        srv.should_exit.set()
        await ticker
        await srv.shutdown()
    return srv


@pytest.mark.timeout(60)
async def test_serving_switching_and_closing_leave_no_cp_cycles(tmp_path: Path) -> None:
    with collector_off() as garbage:
        srv = await scenario(tmp_path)
        await lost_everywhere()  # the transports' connection_lost callbacks, which break the links
        leaked = [o for o in garbage() if cp_side(o)]
    assert srv.cp is not None
    assert srv.cp.counters["redelivered"] == 5 and srv.cp.counters["failovers"] == 1
    kinds = sorted({type(o).__qualname__ for o in leaked})
    assert not leaked, f"cyclic garbage from the CP: {kinds}"
