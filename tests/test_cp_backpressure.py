"""hsbcpd's bounds on real sockets, driven by test hosts and terminals: kept replies at their
bound still let terminals confirm through, a terminal that never confirms is told so, a
confirmation past what was sent hides no later reply, backpressure at the held bound drops
nothing, a closed terminal that reads nothing does not linger, and ten thousand terminals get
their sessions and replies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsb.wire.framing import encode
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.lonecp import ATTRS, fail_over, logon, lone_cp, pair, status, wait_status
from tests.support.procs import Proc, addr, start_cp


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    yield from lone_cp(tmp_path)


async def at_the_kept_bound(cp: Proc, name: str) -> FakeTerminal:
    """A resuming terminal that sent 8 messages and holds their 8 replies, unconfirmed: at the
    CP's bound of kept replies (held_bound 8 here)."""
    a, _b = await pair(cp)
    a.auto_reply = True
    t = await FakeTerminal.connect(cp.info["terminal"], name, hello=False)
    t.send({"t": "hello", "terminal": name, "last_reply": 0})
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    for i in range(1, 9):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    await t.wait_count(lambda m: m["t"] == "reply", 8)
    return t


async def test_kept_replies_at_the_bound_still_let_the_terminals_confirm_through(cp: Proc) -> None:
    """A resuming terminal's unconfirmed replies at the bound (8 here) stop its messages, not its
    confirmations: the CP reads on, takes the confirm, and only then the messages that waited
    behind the bound, in order (it once stopped reading altogether and waited for ever for a
    confirm it would not read)."""
    t = await at_the_kept_bound(cp, "T00009")
    await wait_status(cp, lambda s: s["terminals"]["backpressured"] == 1)
    t.send({"t": "msg", "id": 9, "data": "m9"})  # waits behind the bound
    t.send({"t": "confirm", "id": 8})
    r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 9)
    assert r["data"] == "m9"
    assert [m["id"] for m in t.inbox if m["t"] == "ack"] == list(range(1, 10))
    await wait_status(cp, lambda s: s["terminals"]["backpressured"] == 0)


async def test_a_terminal_that_never_confirms_is_told_so_not_left_unread(cp: Proc) -> None:
    """At the bound of kept replies, a terminal that sends as much as it may have held
    (held_bytes, 8 MiB) without one confirmation is closed with an error that says what to do (it
    was left unread for ever, its loss unseen); what waited was never acknowledged, so nothing
    acknowledged is lost."""
    t = await at_the_kept_bound(cp, "T00011")
    for i in range(9, 9 + 130):  # no confirm: 130 messages of 64 KiB wait behind the bound
        t.send({"t": "msg", "id": i, "data": "x" * 65536})
    err = await t.wait(lambda m: m["t"] == "error")
    assert err["code"] == "unconfirmed_replies" and "confirm" in err["msg"], err
    await t.wait_closed()
    assert max(m["id"] for m in t.inbox if m["t"] == "ack") == 8  # none of those that waited was acknowledged


async def test_a_confirmation_past_what_the_terminal_sent_does_not_hide_later_replies(cp: Proc) -> None:
    """A terminal that confirms (or says in its hello) an id it never sent does not go without
    the replies to what it sends afterwards: the CP takes it as far as the highest id accepted."""
    a, _b = await pair(cp)
    a.auto_reply = True
    t = await FakeTerminal.connect(cp.info["terminal"], "T00010", hello=False)
    t.send({"t": "hello", "terminal": "T00010", "last_reply": 2**63 - 1})
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "confirm", "id": 2**63 - 2})
    t.send({"t": "msg", "id": 1, "data": "one"})
    r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1)
    assert r["data"] == "one"


async def test_backpressure_at_held_bound_drops_nothing(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logon(cp, "T00005")
    for i in range(1, 31):  # bound is 8
        t.send({"t": "msg", "id": i, "data": "x" * 100})
    await t.fs.drain()
    await a.wait_count(lambda m: m["t"] == "deliver", 8)
    await asyncio.sleep(0.3)  # give the CP every chance to read more than it should
    assert len([m for m in a.inbox if m["t"] == "deliver"]) == 8
    assert len([m for m in t.inbox if m["t"] == "ack"]) == 8
    assert (await status(cp))["terminals"]["backpressured"] == 1
    a.auto_reply = True  # the rest are answered with their own data
    first = [m["id"] for m in a.inbox if m["t"] == "deliver"]
    assert first == list(range(1, 9)), first
    for mid in first:
        a.send({"t": "reply", "terminal": "T00005", "id": mid, "data": "ok", "epoch": a.epoch})
    await t.wait_count(lambda m: m["t"] == "ack", 30)
    await t.wait_count(lambda m: m["t"] == "reply", 30)
    assert (await status(cp))["held_messages"] == 0
    await asyncio.sleep(0.2)  # an observation window: a late duplicate or stray frame would arrive in it
    # every message acknowledged once, answered once with its own reply, the terminal connected
    acked = [m["id"] for m in t.inbox if m["t"] == "ack"]
    replies = {m["id"]: m["data"] for m in t.inbox if m["t"] == "reply"}
    assert sorted(acked) == list(range(1, 31)), f"acks {acked}"
    assert len([m for m in t.inbox if m["t"] == "reply"]) == 30 and sorted(replies) == list(range(1, 31)), t.inbox
    assert replies == {i: "ok" if i <= 8 else "x" * 100 for i in range(1, 31)}, replies
    assert not t.closed, "the terminal was disconnected"


async def test_ten_thousand_terminals_get_sessions_and_replies(tmp_path: Path) -> None:
    from tests.support.massterm import run_terminals

    cp = start_cp(tmp_path / "cp", terminals=10_000, held_bound=16)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        a.auto_reply = True
        res = await run_terminals(cp.info["terminal"], [f"T{i:05d}" for i in range(1, 10_001)], timeout=90)
        assert res["sessions"] == 10_000
        assert res["replies"] == 10_000
        st_ = await status(cp)
        assert st_["terminals"]["connected"] == 10_000 and st_["terminals"]["active_sessions"] == 10_000
        assert st_["held_messages"] == 0
        await res["close"]()
    finally:
        cp.stop()


async def test_a_closed_terminal_that_reads_nothing_does_not_linger(tmp_path: Path) -> None:
    """The CP closes a terminal's connection (here: the classic path at a failover) while
    megabytes of replies are still queued to it and the terminal reads nothing. A close
    waits for those bytes to go out; after CLOSE_LINGER_S the connection is dropped
    instead. The terminal logging on again meanwhile is one terminal, not two."""
    import socket
    from pathlib import Path

    # more than the kernels can hold between us (the CP's send buffer grows up to tcp_wmem's
    # maximum; this end reads nothing and keeps a tiny receive buffer): 8 replies of `size`
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    size = max(900_000, wmem_max // 4)
    cp = start_cp(
        tmp_path / "cp", terminals=1, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=8, max_frame=size + 4096
    )
    try:
        a, b = await pair(cp)
        h, p = addr(cp.info["terminal"])
        sock = socket.create_connection((h, p))
    except BaseException:
        cp.stop()
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, buffers little
    try:
        sock.sendall(encode({"t": "hello", "terminal": "NOSB"}))
        for i in range(1, 9):
            sock.sendall(encode({"t": "msg", "id": i, "data": "x"}))
        await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "NOSB", 8)
        big = "r" * size
        for i in range(1, 9):
            a.send({"t": "reply", "terminal": "NOSB", "id": i, "data": big, "epoch": a.epoch})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (st := await status(cp))["held_messages"]:  # every reply taken from the host
            assert loop.time() < deadline, st
            await asyncio.sleep(0.05)
        assert st["terminals"]["connected"] == 1
        await fail_over(a, b)  # NOSB has no standby session: its connection is closed
        b.auto_open = ATTRS
        t2 = await logon(cp, "NOSB")  # at once, while the old connection still sends
        assert (await status(cp))["terminals"]["connected"] == 1
        ev = await loop.run_in_executor(None, lambda: cp.wait_event("connection_dropped", timeout=15, link="terminal"))
        assert ev["unsent_bytes"] > 0
        st = await status(cp)
        assert st["terminals"]["connected"] == 1 and st["terminals"]["active_sessions"] == 1, st["terminals"]
        t2.send({"t": "msg", "id": 9, "data": "after"})
        await t2.wait(lambda m: m["t"] == "ack" and m["id"] == 9)
    finally:
        sock.close()
        cp.stop()
