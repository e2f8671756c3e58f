"""hsbterm's load generator against a real hsbcpd process, with test host links on the host side:
a clean run, and a failover mid-run (standby sessions switched, a non-standby terminal reconnected)
with nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import time

import pytest

from hsb.term.load import run_load, terminal_names
from tests.support.hostclient import FakeHost
from tests.support.procs import Proc, addr, start_cp

pytestmark = pytest.mark.timeout(60)

ATTRS = {"protocol": "hsb1"}
N = 20


@pytest.fixture
def cp(tmp_path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=N, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=64)
    yield proc
    proc.stop()


async def test_clean_run_through_hsbcpd(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    try:
        r = await run_load(addr(cp.info["terminal"]), terminals=N, rate=400, duration=1.0, settle=5)
    finally:
        await a.close()
    assert r.ok, r.to_dict()
    assert r.sent > 200 and r.acked == r.replied == r.sent
    assert r.welcomed == r.sessions_opened == N and r.session_open_s is not None
    assert r.disconnects == 0 and r.switched == 0


async def test_failover_mid_run_loses_nothing(cp: Proc) -> None:
    names = [*terminal_names(N), "NOSB"]
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    b.auto_open, b.auto_reply = ATTRS, True  # once active: reopen NOSB's session, answer (re)deliveries
    marks: list[tuple[str, float]] = []
    try:
        sending = asyncio.Event()
        task = asyncio.ensure_future(
            run_load(
                addr(cp.info["terminal"]),
                terminals=len(names),
                names=names,
                rate=300,
                duration=2.0,
                settle=10,
                sending=sending,
                classic=["NOSB"],
                marks=marks,
            )
        )
        await asyncio.wait_for(sending.wait(), 15)
        for n in terminal_names(N):
            b.send({"t": "open", "terminal": n, "kind": "standby", "attrs": ATTRS})
        await b.wait_count(lambda m: m["t"] == "opened" and m.get("kind") == "standby", N)
        await a.wait_count(lambda m: m["t"] == "deliver", 100)
        a.auto_reply = False  # the active stops answering: what it is given from now on stays in flight
        start = len(a.inbox)
        given = sum(m["t"] == "deliver" for m in a.inbox)  # 100 or a few more (one read brings several)
        await a.wait_count(lambda m: m["t"] == "deliver", given + 30)
        in_flight = {(m["terminal"], m["id"]) for m in a.inbox[start:] if m["t"] == "deliver"} - a.replied
        marks.append(("active dies", time.time()))
        await a.close(drain=True)  # the active dies with messages in flight (all the CP wrote to it read)
        await b.wait(lambda m: m["t"] == "active_lost")
        b.send({"t": "switchover", "reason": "test", "planned": False})
        granted = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
        assert granted["t"] == "switch_granted", granted
        r = await asyncio.wait_for(task, 40)
    finally:
        await b.close()
    assert r.ok, r.failures
    assert r.lost == 0 and r.duplicates == 0 and r.unacked == 0 and r.unexpected == 0 and r.bad_data == 0
    assert r.replied == r.sent == r.acked
    assert r.switched == N  # every standby-capable terminal kept its session
    assert r.per_terminal_disconnects.get("NOSB", 0) >= 1  # the classic path: reconnected
    assert r.disconnects_standby_capable == 0
    # every message the dead active had been given and never answered went to host-b, marked
    assert len(in_flight) >= 30
    redelivered = {(m["terminal"], m["id"]) for m in b.inbox if m["t"] == "deliver" and m.get("redelivered")}
    first_time = {(m["terminal"], m["id"]) for m in b.inbox if m["t"] == "deliver" and not m.get("redelivered")}
    assert in_flight <= redelivered, sorted(in_flight - redelivered)[:5]
    assert not in_flight & first_time
    # marked only what went to host-a: or, at most, what the CP wrote to it in its last moments,
    # after the link was ending and before it noticed (sent, maybe never read; a mark too many is
    # safe, one too few is not): later than anything host-a read from that terminal
    seen = {(m["terminal"], m["id"]) for m in a.inbox if m["t"] == "deliver"}
    last_seen: dict[str, int] = {}
    for t, i in seen:
        last_seen[t] = max(i, last_seen.get(t, 0))
    late = sorted(k for k in redelivered - seen if k[1] <= last_seen.get(k[0], 0))
    assert not late, late[:5]
    assert len(redelivered - seen) <= 10, sorted(redelivered - seen)[:5]  # a few in flight at the end, not everything later
    # the pause the terminals saw: the messages in flight waited for the switchover
    assert r.pause is not None and r.pause["worst_ms"] is not None and r.pause["worst_ms"] > 0
