"""hsbterm's load generator against a real hsbcpd process, with test host links on the host side:
a clean run, and a failover mid-run (standby sessions switched, a non-standby terminal reconnected)
with nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.term.load import run_load, terminal_names
from hsb.wire.client import request
from tests.support.hostclient import FakeHost
from tests.support.procs import SECRET, Proc, addr, start_cp

pytestmark = pytest.mark.timeout(60)

ATTRS = {"protocol": "hsb1"}
N = 20


@pytest.fixture
def cp(tmp_path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=N, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=64)
    yield proc
    proc.stop()


async def cp_status(cp: Proc) -> dict[str, Any]:
    h, p = addr(cp.info["admin"])
    return (await request(h, p, SECRET, {"t": "status"}))["data"]  # type: ignore[no-any-return]


async def until_status(cp: Proc, cond: Any, what: str, timeout: float = 10.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond(st := await cp_status(cp)):
        assert loop.time() - t0 < timeout, f"{what}: not within {timeout} s ({st.get('counters')}, held {st.get('held_messages')})"
        await asyncio.sleep(0.02)
    return st


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


async def test_a_cp_flip_mid_run_loses_nothing(cp: Proc) -> None:
    names = [*terminal_names(N), "NOSB"]
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    b.auto_open, b.auto_reply = ATTRS, True  # once active: reopen NOSB's session, answer (re)deliveries
    marks: list[tuple[str, float]] = []
    try:
        sending, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(
            run_load(
                addr(cp.info["terminal"]),
                terminals=len(names),
                names=names,
                rate=300,
                duration=3600,  # until `stop`: every step below happens while it sends, however slow the machine
                settle=10,
                sending=sending,
                stop=stop,
                classic=["NOSB"],
                marks=marks,
                resume=True,  # replies counted as they come (a non-resuming terminal's after their record is durable): the exact count below
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
        # The CP has seen host-a go: it read every reply host-a sent, and nothing more goes to it.
        # What it delivered and was not answered is exactly what the flip must mark redelivered.
        # The load goes on: messages arriving now are held, never delivered, and must not be
        # marked; the switchover waits until there are some.
        st = await cp_status(cp)
        owed = st["counters"].get("delivered", 0) - st["counters"].get("replies", 0)
        assert st["counters"].get("redelivered", 0) == 0
        await until_status(cp, lambda s: s["held_messages"] >= owed + 5, "messages held, never delivered")
        b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
        granted = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
        assert granted["t"] == "switch_granted", granted
        # the new active is given what was owed and held, then fresh messages: then the load ends
        await b.wait_count(lambda m: m["t"] == "deliver", owed + 5 + 30, timeout=20)
        stop.set()
        r = await asyncio.wait_for(task, 40)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
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
    # marked exactly what went to host-a and was not answered (the CP's own count of what it
    # delivered, so a message it wrote in host-a's last moments and host-a never read counts too);
    # not one held message that never went to host-a
    st = await cp_status(cp)
    assert st["counters"].get("redelivered", 0) == owed, (st["counters"], owed)
    marked = [m for m in b.inbox if m["t"] == "deliver" and m.get("redelivered")]
    assert len(marked) == len(redelivered) == owed, (len(marked), len(redelivered), owed)
    # the pause the terminals saw: the messages in flight waited for the switchover
    assert r.pause is not None and r.pause["worst_ms"] is not None and r.pause["worst_ms"] > 0


async def test_a_send_schedule_that_fails_fails_the_run(cp: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule that makes the terminals send dying on an error must not leave a run that
    sent a little and then nothing judged OK on what it did send."""
    from hsb.term.client import TerminalClient

    real = TerminalClient.submit
    calls = 0

    def flaky(self: TerminalClient, *a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("a bug in the sender")
        return real(self, *a, **kw)

    monkeypatch.setattr(TerminalClient, "submit", flaky)
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    try:
        r = await run_load(addr(cp.info["terminal"]), terminals=N, rate=400, duration=1.0, settle=5)
    finally:
        await a.close()
    assert r.sent == 4 and r.acked == r.replied == 4  # what it sent was answered ...
    assert not r.ok and any("sender stopped" in f and "a bug in the sender" in f for f in r.failures), r.failures  # ... and still not OK
