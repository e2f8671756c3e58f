"""Who is read and who is blamed (hsb.wire.conn): the CP's idle timers blame only a silent peer
(a terminal the CP itself stopped reading, its held messages at their bound, is not closed for
"idle"), and a peer that does not read what it asked for is not read either."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.admin import CPAdminProtocol
from hsb.cp.host_link import HostProtocol
from hsb.cp.terminal_link import TerminalProtocol
from hsb.host.admin import HostAdminProtocol
from hsb.wire.conn import FramedProtocol
from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.hostclient import FakeHost, FakeTerminal, cp_status, holding_terminal, host_came, logged_off_holding, until_cp_status
from tests.support.procs import Proc, log_events, restart_cp, start_cp
from tests.support.transports import CountingTransport, stand_in

ATTRS = {"protocol": "hsb1", "codepage": "utf-8"}
TIMEOUT_S = 1.0  # the CP's timeout under test (auth_timeout bounds a frame begun and stalled)


@pytest.mark.parametrize("idle", ["partial_frame", "terminal_idle_timeout"])
async def test_a_terminal_the_cp_stopped_reading_is_not_closed_as_idle(tmp_path: Path, idle: str) -> None:
    extra: dict[str, Any] = {"terminal_idle_timeout": TIMEOUT_S} if idle == "terminal_idle_timeout" else {}
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4, auth_timeout=TIMEOUT_S, **extra)
    try:
        await host_came(cp)  # (else nothing is acknowledged: hsb.cp.first_host)
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "welcome")
        # no active host: the four messages are held at the bound, and the CP stops reading
        frames = b"".join(encode({"t": "msg", "id": i, "data": "x"}) for i in range(1, 6))
        fifth = len(encode({"t": "msg", "id": 5, "data": "x"}))
        cut = len(frames) - (3 if idle == "partial_frame" else fifth)
        t.fs.writer.write(frames[:cut])  # the fifth frame begun, or not sent at all
        await t.wait_count(lambda m: m["t"] == "ack", 4)
        # twice the timeout with the connection unread by the CP's own choice: still open
        await asyncio.sleep(2.5 * TIMEOUT_S)
        assert not t.closed, [m for m in t.inbox if m["t"] == "error"]
        assert not [m for m in t.inbox if m["t"] == "error"]
        # an active comes: the held four are answered, the CP reads on, the fifth completes
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_reply = True
        await a.wait(lambda m: m["t"] == "session_request")  # (asked at its registration)
        a.send({"t": "open", "terminal": "T00001", "kind": "active", "attrs": ATTRS, "epoch": a.epoch})
        t.fs.writer.write(frames[cut:])
        replies = await t.wait_count(lambda m: m["t"] == "reply", 5)
        assert sorted(m["id"] for m in replies) == [1, 2, 3, 4, 5]
        assert not t.closed
        # and a terminal that really is silent (nothing held, the CP reading) is still closed
        if idle == "terminal_idle_timeout":
            await t.wait_closed(timeout=5 * TIMEOUT_S)
            assert [m for m in t.inbox if m["t"] == "error" and m["code"] == "idle_timeout"]
    finally:
        cp.stop()


class _ReadingTransport(CountingTransport):
    """Records whether the protocol wants its peer read."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:1")
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


@pytest.mark.parametrize(
    ("cls", "reads_on"),
    [(CPAdminProtocol, False), (HostAdminProtocol, False), (TerminalProtocol, False), (HostProtocol, True)],
)
def test_a_peer_that_does_not_read_is_not_read_except_on_the_links_that_must_flow(cls: type[FramedProtocol], reads_on: bool) -> None:
    """An admin client pipelining requests without reading the answers would grow the daemon's
    write buffer without bound: at the write high-water mark it is not read either, until it
    reads. The CP's host link reads on (its heartbeats and replies must flow while the CP writes
    a burst of deliveries)."""
    p = cls.__new__(cls)  # the write back-pressure hooks only: no daemon behind them
    t = _ReadingTransport()
    p.transport, p.closed, p.reading_paused, p._yielding, p._backlog = stand_in(t), False, False, False, deque()
    p.pause_writing()
    assert t.reading is reads_on
    p.resume_writing()
    assert t.reading


async def test_held_bytes_bound_a_terminal_before_the_count_does_and_nothing_drops(tmp_path: Path) -> None:
    """256 messages of a megabyte each would be 256 MiB held per terminal: `held_bytes` bounds
    the data too (here 16 KiB: the fourth 5,000-byte message reaches it), and nothing is dropped."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=256, held_bytes=16384)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        for i in range(1, 11):
            t.send({"t": "msg", "id": i, "data": "x" * 5000})
        await t.fs.drain()
        await a.wait_count(lambda m: m["t"] == "deliver", 4)
        await asyncio.sleep(0.3)  # give the CP every chance to read more than it should
        assert len([m for m in t.inbox if m["t"] == "ack"]) == 4
        a.auto_reply = True  # the rest are answered with their own data
        first = [m["id"] for m in a.inbox if m["t"] == "deliver"]
        assert first == [1, 2, 3, 4], first
        for mid in first:
            a.send({"t": "reply", "terminal": "T00001", "id": mid, "data": "ok", "epoch": a.epoch})
        await t.wait_count(lambda m: m["t"] == "ack", 10)
        await t.wait_count(lambda m: m["t"] == "reply", 10)
        await asyncio.sleep(0.2)  # an observation window: a late duplicate or stray frame would arrive in it
        # every message acknowledged once, answered once with its own reply, the terminal connected
        acked = [m["id"] for m in t.inbox if m["t"] == "ack"]
        replies = {m["id"]: m["data"] for m in t.inbox if m["t"] == "reply"}
        assert sorted(acked) == list(range(1, 11)), f"acks {acked}"
        assert len([m for m in t.inbox if m["t"] == "reply"]) == 10 and sorted(replies) == list(range(1, 11)), t.inbox
        assert replies == {i: "ok" if i <= 4 else "x" * 5000 for i in range(1, 11)}, {k: v[:12] for k, v in replies.items()}
        assert not t.closed, "the terminal was disconnected"
    finally:
        cp.stop()


async def test_the_cps_own_bound_on_held_data_stops_reading_terminals_holding_messages_and_drops_nothing(tmp_path: Path) -> None:
    """Each terminal's bounds allow 8 MiB here; the CP's own (`held_total_bytes`, 16 KiB) is
    reached by two terminals together: past it, a terminal holding messages is not read until
    the active answers them (the first terminal after its fourth message, the second after its
    first), said in status, the metrics' source and the log; once answered, everything is taken,
    acknowledged and answered once, nobody disconnected, and the count is back to zero."""
    cp = start_cp(tmp_path / "cp", terminals=3, held_total_bytes=16384)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        t1 = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        t2 = await FakeTerminal.connect(cp.info["terminal"], "T00002")
        for t in (t1, t2):
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        for i in range(1, 11):
            t1.send({"t": "msg", "id": i, "data": "x" * 5000})
        await t1.fs.drain()
        await a.wait_count(lambda m: m["t"] == "deliver", 4)
        for i in range(1, 11):
            t2.send({"t": "msg", "id": i, "data": "y" * 5000})
        await t2.fs.drain()
        await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00002", 1)
        await asyncio.sleep(0.3)  # give the CP every chance to read more than it should
        assert len([m for m in t1.inbox if m["t"] == "ack"]) == 4
        assert len([m for m in t2.inbox if m["t"] == "ack"]) == 1
        st = await cp_status(cp)
        assert st["held_bytes"] == {"total": 25000, "kept": 0, "bound": 16384, "reached": True}, st["held_bytes"]
        assert st["terminals"]["backpressured"] == 2 and st["held_messages"] == 5
        reached = [e for e in log_events(tmp_path / "cp" / "cp.log") if e["event"] == "cp_held_total_reached"]
        assert len(reached) == 1 and reached[0]["bound"] == 16384, reached
        # the active answers: the rest is read, acknowledged and answered, in order, once
        a.auto_reply = True
        for m in [m for m in a.inbox if m["t"] == "deliver"]:
            a.send({"t": "reply", "terminal": m["terminal"], "id": m["id"], "data": "ok", "epoch": a.epoch})
        for t in (t1, t2):
            await t.wait_count(lambda m: m["t"] == "reply", 10)
        await asyncio.sleep(0.2)  # an observation window: a late duplicate or stray frame would arrive in it
        for t in (t1, t2):
            acked = [m["id"] for m in t.inbox if m["t"] == "ack"]
            replied = [m["id"] for m in t.inbox if m["t"] == "reply"]
            assert acked == list(range(1, 11)) and replied == list(range(1, 11)), (acked, replied)
            assert not t.closed and not [m for m in t.inbox if m["t"] == "error"]
        st = await cp_status(cp)
        assert st["held_bytes"] == {"total": 0, "kept": 0, "bound": 16384, "reached": False}, st["held_bytes"]
        assert st["terminals"]["backpressured"] == 0 and st["held_messages"] == 0
        assert [e for e in log_events(tmp_path / "cp" / "cp.log") if e["event"] == "cp_held_total_below"]
    finally:
        cp.stop()


async def test_past_the_cps_own_bound_a_terminal_without_a_session_at_the_active_is_still_read(tmp_path: Path) -> None:
    """Its held message goes to the active only with its logoff (or its next hello): were it not
    read, its bye would never be, and it could never log on again. A terminal whose messages wait
    for the active is not read; raised by a reload, the bound lets it go within a tick."""
    cp = cp_core(tmp_path, 3, cp="held_total_bytes = 4096\n")
    a = fake_host(cp, "host-a", "active", record=True)
    t2 = recording_terminal(cp, "T00002", last_reply=None)
    cp.host_open(a, "T00002", "active", dict(ATTRS))
    t1 = recording_terminal(cp, "T00001", last_reply=None)
    T1, T2 = cp.terms["T00001"], cp.terms["T00002"]
    for t in (t1, t2):
        t.decoder.first_done()
    t2.data_received(encode({"t": "msg", "id": 1, "data": "y" * 5000}))  # the active is slow: over the bound
    assert cp.total_over and T2.paused and t2.reading_paused  # its message waits for the active: not read
    t1.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert not T1.paused and not t1.reading_paused  # no session: its message goes only with its logoff
    cp.host_open(a, "T00001", "active", dict(ATTRS))  # (its message delivered with the session)
    t1.data_received(encode({"t": "msg", "id": 2, "data": "x"}))
    assert T1.paused and t1.reading_paused and T1 in cp.slowed  # its session at the active: not read
    cp.host_close(a, "T00001", "active")  # the active closes the session: read again at once
    assert not T1.paused and not t1.reading_paused and T1 not in cp.slowed
    t1.data_received(encode({"t": "bye"}))
    assert T1.leaving, "its bye was not read"
    a.flush()
    delivered = [f for f in a.transport.frames() if f["t"] in ("deliver", "deliver_batch")]
    assert any("T00001" in str(f) for f in delivered), delivered  # handed to the active with the logoff
    cp.held_total_bytes = 1 << 20  # a reload raises the bound
    cp.recheck_slowed()
    assert not cp.total_over and not T2.paused and not t2.reading_paused and not cp.slowed


async def test_a_cp_restarted_on_a_journal_holding_more_than_its_own_bound_says_so_at_once(tmp_path: Path) -> None:
    """No active: the messages are held (acknowledged, journalled) past the bound; the CP killed and
    started again on its journal is over its bound from the start (status, log), not only once a
    terminal sends again."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_total_bytes=8192)
    try:
        await host_came(cp)
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "welcome")
        for i in range(1, 4):
            t.send({"t": "msg", "id": i, "data": "z" * 3000})
        await t.wait_count(lambda m: m["t"] == "ack", 3)
        cp.kill(signal.SIGKILL)
        cp = restart_cp(cp)
        st = await cp_status(cp)
        assert st["held_bytes"] == {"total": 9000, "kept": 0, "bound": 8192, "reached": True}, st["held_bytes"]
        assert [e for e in log_events(tmp_path / "cp" / "cp.log") if e["event"] == "cp_held_total_reached"]
    finally:
        cp.stop()


async def test_kept_replies_do_not_hold_the_cps_own_bound(tmp_path: Path) -> None:
    """Kept replies shrink only as their terminals confirm them, never by reading others less: a
    terminal that went away keeping replies must not put every other one on one message at a time."""
    cp = cp_core(tmp_path, 3, cp="held_total_bytes = 4096\n")
    a = fake_host(cp, "host-a", "active")
    cp.host_open(a, "T00001", "active", dict(ATTRS))
    t1 = recording_terminal(cp, "T00001", last_reply=0)  # resuming: its replies are kept until it confirms
    t1.decoder.first_done()
    for i in (1, 2):
        t1.data_received(encode({"t": "msg", "id": i, "data": "q"}))
        cp.host_reply(a, "T00001", i, "r" * 2400)
    t1.connection_lost(None)  # gone without confirming
    assert cp.counts.kept_data == 4800 and cp.counts.held_data == 0 and not cp.total_over
    cp.host_open(a, "T00002", "active", dict(ATTRS))
    t2 = recording_terminal(cp, "T00002", last_reply=None)
    t2.decoder.first_done()
    t2.data_received(encode({"t": "msg", "id": 1, "data": "m"}) + encode({"t": "msg", "id": 2, "data": "m"}))
    assert len(cp.terms["T00002"].held) == 2 and not t2.reading_paused


async def test_the_cps_own_bound_is_said_once_per_crossing_not_per_message(tmp_path: Path) -> None:
    """From `held_total_bytes` until the data is below 90 % of it: a load near the bound does not
    log a warning and an info line per message."""
    cp = cp_core(tmp_path, 2, cp="held_total_bytes = 10000\n")
    a = fake_host(cp, "host-a", "active")
    cp.host_open(a, "T00001", "active", dict(ATTRS))
    t = recording_terminal(cp, "T00001", last_reply=None)
    t.decoder.first_done()
    term = cp.terms["T00001"]
    crossings = []
    real = cp._total_bound

    def counted(over: bool) -> None:
        crossings.append(over)
        real(over)

    cp._total_bound = counted
    t.data_received(encode({"t": "msg", "id": 1, "data": "x" * 9500}))
    for i in range(2, 40):  # one answered, the next taken: 9,500 to 10,000 bytes and back, again and again
        t.data_received(encode({"t": "msg", "id": i, "data": "x" * 500}))
        cp.host_reply(a, "T00001", i, "ok")
    assert crossings == [True], crossings
    cp.host_reply(a, "T00001", 1, "ok")
    assert crossings == [True, False] and not term.paused and not t.reading_paused


async def test_the_bytes_held_and_kept_go_back_to_zero_when_everything_is_settled(tmp_path: Path) -> None:
    """The byte counts follow the messages and the kept replies exactly (a count that drifted up
    would stop reading a terminal for ever)."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    cp.host_open(a, "T00001", "active", dict(ATTRS))
    t = recording_terminal(cp, "T00001", last_reply=0)  # resuming: its replies are kept until it confirms
    term = cp.terms["T00001"]
    for i in range(1, 6):
        cp.terminal_msg(term, i, "d" * (100 * i))
    assert term.held_bytes == 100 * (1 + 2 + 3 + 4 + 5)
    cp.terminal_msg(term, 6, "é" * 50)  # text counts in its UTF-8 bytes, not its characters
    assert term.held_bytes == 100 * (1 + 2 + 3 + 4 + 5) + 100
    cp.host_reply(a, "T00001", 6, "")
    assert term.held_bytes == 100 * (1 + 2 + 3 + 4 + 5)
    for i in range(1, 6):
        cp.host_reply(a, "T00001", i, "r" * i)
    assert term.held_bytes == 0 and term.kept_bytes == 1 + 2 + 3 + 4 + 5
    assert cp.counts.held_data == 0 and cp.counts.kept_data == 1 + 2 + 3 + 4 + 5  # all terminals together
    cp.terminal_confirm(term, 6)
    assert term.kept_bytes == 0 and not term.replies and t.term is term
    assert cp.counts.held_data == cp.counts.kept_data == 0


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_terminal_whose_unread_connection_went_can_log_on_again_at_once(tmp_path: Path, how: str) -> None:
    """At its bound of held messages (no active: they wait) the CP stops reading a terminal, so
    its reset or close is not seen by reading. Its reconnect asks the kernel about the old
    connection: gone, it is dropped and the new one logs on at once (it was refused as already
    connected until an active came); a live one is still refused."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        t = await holding_terminal(cp, sent=5, acked=4)
        # a second device under the same name while the first is alive: refused, as before
        dup = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        await dup.wait(lambda m: m["t"] == "error")
        assert [m["code"] for m in dup.inbox if m["t"] == "error"] == ["already_connected"]
        sock = t.fs.writer.get_extra_info("socket")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.fs.writer.transport.abort() if how == "reset" else t.fs.writer.close()
        await t.wait_closed()
        again = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        welcome = await again.wait(lambda m: m["t"] in ("welcome", "error"))
        assert welcome["t"] == "welcome", welcome
        assert welcome["last_acked"] == 4
        again.send({"t": "msg", "id": 5, "data": "m5"})  # not acknowledged before: sent again
        st = await cp_status(cp)
        assert st["terminals"]["connected"] == 1, st["terminals"]
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_reply = True
        await a.wait(lambda m: m["t"] == "session_request")  # (asked at its registration)
        a.send({"t": "open", "terminal": "T00001", "kind": "active", "attrs": ATTRS, "epoch": a.epoch})
        replies = await again.wait_count(lambda m: m["t"] == "reply", 5)
        assert sorted(m["id"] for m in replies) == [1, 2, 3, 4, 5]
        assert {m["id"]: m["data"] for m in replies} == {i: f"m{i}" for i in range(1, 6)}
        await asyncio.sleep(0.2)  # an observation window: a duplicate would arrive in it
        assert len([m for m in again.inbox if m["t"] == "reply"]) == 5 and not again.closed
        assert [e for e in cp.events("terminal_connection_gone") if e.get("terminal") == "T00001"]
    finally:
        cp.stop()


async def _at_bound_with_an_active(cp: Proc, frames: list[dict[str, Any]]) -> tuple[FakeHost, FakeTerminal]:
    """A non-resuming terminal with its session at an active that answers nothing: `frames` sent
    in one write, the first four messages held (the bound) and the CP no longer reading it."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
    await a.wait(lambda m: m["t"] == "session_request")
    a.send({"t": "open", "terminal": "T00001", "kind": "active", "attrs": ATTRS, "epoch": a.epoch})
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.fs.writer.write(b"".join(encode(f) for f in frames))
    await t.wait_count(lambda m: m["t"] == "ack", 4)
    await a.wait_count(lambda m: m["t"] == "deliver", 4)
    return a, t


async def test_replies_for_a_terminal_that_left_its_unread_connection_wait_for_its_return(tmp_path: Path) -> None:
    """A terminal that does not resume, at its bound, leaves: the replies the active then gives
    are not written into the connection it left (and lost there: nothing else keeps them) but
    kept for its next logon, once each (found at the reply, or by the CP's sweep of the
    connections it does not read)."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        a, t = await _at_bound_with_an_active(cp, [{"t": "msg", "id": i, "data": f"m{i}"} for i in range(1, 6)])
        t.fs.writer.close()
        await t.wait_closed()
        for m in [m for m in a.inbox if m["t"] == "deliver"]:
            a.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": f"r{m['id']}", "epoch": a.epoch})
        await until_cp_status(cp, lambda st: st["held_messages"] == 0 and st["terminals"]["connected"] == 0)
        again = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        replies = await again.wait_count(lambda m: m["t"] == "reply", 4)
        await asyncio.sleep(0.2)  # an observation window: a duplicate would arrive in it
        assert {m["id"]: m["data"] for m in replies} == {i: f"r{i}" for i in range(1, 5)}
        assert len([m for m in again.inbox if m["t"] == "reply"]) == 4
        assert [e["at"] for e in cp.events("terminal_connection_gone")] in (["reply"], ["sweep"])
    finally:
        cp.stop()


async def test_an_unread_connection_its_terminal_left_is_found_gone_by_the_cps_sweep(tmp_path: Path) -> None:
    """No active: the terminal's messages wait at its bound and the CP does not read it, so its
    close is not seen by reading; the CP asks the kernel about such connections once a second,
    and the terminal is no longer counted connected."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        t = await holding_terminal(cp, sent=5, acked=4)
        st = await cp_status(cp)
        assert st["terminals"]["connected"] == 1 and st["terminals"]["backpressured"] == 1, st["terminals"]
        t.fs.writer.close()
        await t.wait_closed()
        st = await until_cp_status(cp, lambda st: st["terminals"]["connected"] == 0, timeout=5.0)
        assert st["terminals"]["backpressured"] == 0 and st["held_messages"] == 4  # nothing acknowledged is dropped
        assert [e["at"] for e in cp.events("terminal_connection_gone")] == ["sweep"]
        assert st["counters"]["connections_gone"] == 1
    finally:
        cp.stop()


@pytest.mark.parametrize("where", ["read", "unread"])
async def test_a_bye_behind_the_bound_is_a_logoff_when_its_connection_goes(tmp_path: Path, where: str) -> None:
    """Messages and a bye: the bye is read but waits behind the held bound (one write), or the
    CP no longer reads it (a write of its own, after the bound: in the kernel's receive queue,
    which keeps it after the terminal's close). The terminal goes: its session closes at the
    active as a logoff, not a disconnect."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        frames = [{"t": "msg", "id": i, "data": "x"} for i in range(1, 6)]
        a, t = await _at_bound_with_an_active(cp, frames + [{"t": "bye"}] if where == "read" else frames)
        if where == "unread":
            t.send({"t": "bye"})
            await t.fs.drain()
        t.fs.writer.close()
        await t.wait_closed()
        closed = await a.wait(lambda m: m["t"] == "session_closed")
        assert closed["reason"] == "logoff", closed
    finally:
        cp.stop()


@pytest.mark.parametrize("resume", [False, True])
async def test_a_terminal_that_logged_off_and_went_while_no_active_served_has_its_messages_answered(tmp_path: Path, resume: bool) -> None:
    """No active: three messages held; the terminal says bye and goes. When an active comes,
    they go to it (a terminal that logged off does not come back for them); their replies have
    nobody to go to: dropped and counted, not kept for whoever logs on under that name next."""
    cp = start_cp(tmp_path / "cp", terminals=2)
    try:
        await logged_off_holding(cp, n=3, resume=resume)
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        delivered = await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00001", 3)
        assert sorted(m["id"] for m in delivered) == [1, 2, 3]
        for m in delivered:
            a.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": "ok", "epoch": a.epoch})
        st = await until_cp_status(cp, lambda st: st["held_messages"] == 0)
        assert st["counters"]["replies_after_logoff"] == 3
        assert st["held_bytes"]["kept"] == 0
        again = await holding_terminal(cp, sent=0, acked=0, resume=resume)  # the next run under that name
        await asyncio.sleep(0.3)  # an observation window: a reply of the run before would arrive in it
        assert not [m for m in again.inbox if m["t"] == "reply"], again.inbox
    finally:
        cp.stop()


async def test_a_terminal_at_its_bound_whose_session_was_refused_logs_off_by_its_bye_and_close(tmp_path: Path) -> None:
    """The active refuses the terminal's session: its held messages go to the active only with
    its logoff, and at its bound the CP does not read it. Its bye then waits in the kernel's
    receive queue; once the terminal closes, the CP finds the connection gone, reads the bye
    from that queue, and the held messages go to the active as a logoff's do (their replies
    have nobody to go to: counted)."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        req = await a.wait(lambda m: m["t"] == "session_request" and m["terminal"] == "T00001")
        a.send({"t": "refuse", "terminal": req["terminal"], "reason": "not defined here", "epoch": a.epoch})
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "closed")
        for i in range(1, 6):
            t.send({"t": "msg", "id": i, "data": f"m{i}"})
        await t.wait_count(lambda m: m["t"] == "ack", 4)
        t.send({"t": "bye"})
        await t.fs.drain()
        assert not [m for m in a.inbox if m["t"] in ("deliver", "deliver_batch")]  # no session: they wait
        t.fs.writer.close()
        await t.wait_closed()
        delivered = await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00001", 4)
        assert sorted(m["id"] for m in delivered) == [1, 2, 3, 4]  # the fifth was never acknowledged: not taken
        for m in delivered:
            a.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": "ok", "epoch": a.epoch})
        st = await until_cp_status(cp, lambda st: st["held_messages"] == 0)
        assert st["counters"]["replies_after_logoff"] == 4 and st["terminals"]["connected"] == 0
    finally:
        cp.stop()


async def test_a_bye_read_behind_the_bound_is_a_logoff_when_the_connection_is_lost_before_any_sweep(tmp_path: Path) -> None:
    """Messages up to the bound, one more and a bye, read in one go: the bye waits, decoded, behind
    the bound. The connection is then lost (a write into it failed, say) before the once-a-second
    sweep finds it gone: still a logoff, so its held messages go to an active with the logoff
    (it was a plain disconnect: they waited for ever for the terminal to come back)."""
    from hsb.wire.framing import encode
    from tests.support.cpcore import cp_core, recording_terminal

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\n")
    t = recording_terminal(cp, "T00001")
    frames = [{"t": "msg", "id": i, "data": "x"} for i in range(1, 6)] + [{"t": "bye"}]
    t.data_received(b"".join(encode(m) for m in frames))
    term = cp.terms["T00001"]
    assert len(term.held) == 4 and t.reading_paused and not term.leaving  # the bye is read, not taken
    t.connection_lost(ConnectionResetError("the terminal went"))
    assert term.leaving and term.conn is None, "a bye read before the connection was lost is a logoff"
    assert len(term.held) == 4  # nothing acknowledged dropped: they go to the active with the logoff


async def test_a_reload_raising_a_terminals_own_bound_reads_it_again(tmp_path: Path) -> None:
    """A terminal held at its own held_bound (its session refused: its messages wait for its
    logoff) was read again only once one of them settled, which nothing did: raising held_bound
    by a reload let go only the terminals held at the CP's own bound."""
    cp = cp_core(tmp_path, 3, cp="held_bound = 2\n")
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", None)
    cp.host_refuse(a, "T00001", "not here")
    term = cp.terms["T00001"]
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}) + encode({"t": "msg", "id": 2, "data": "y"}))
    assert term.paused and t.reading_paused and len(term.held) == 2
    cp.held_bound = 10  # a reload raises it (hsb.cp.server: then recheck_slowed)
    cp.recheck_slowed()
    assert not term.paused and not t.reading_paused
    t.data_received(encode({"t": "bye"}))
    assert term.leaving, "its bye was not read"


async def test_a_bye_parked_behind_unconfirmed_replies_is_a_logoff_when_the_cp_closes_the_connection(tmp_path: Path) -> None:
    """A resuming terminal at the kept-replies bound: what it sends is parked until it confirms,
    its bye too. The CP closes the connection (an idle timer, say) and the terminal says hello
    again before that connection's connection_lost: the bye was lost (the close looked for one
    only among frames read and not parked), and the replies of its logoff went to the next logon."""
    cp = cp_core(tmp_path, 3, cp="held_bound = 2\n")
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", 0)
    t.decoder.first_done()
    cp.host_open(a, "T00001", "active", {})
    term = cp.terms["T00001"]
    for i in (1, 2):
        t.data_received(encode({"t": "msg", "id": i, "data": f"m{i}"}))
        cp.host_reply(a, "T00001", i, f"r{i}")
    assert len(term.replies) == 2 and t.parked is not None  # at the bound, unconfirmed
    t.data_received(encode({"t": "msg", "id": 3, "data": "m3"}) + encode({"t": "bye"}))
    assert [m["t"] for m in t.parked] == ["msg", "bye"]
    t.close_with_error("idle_timeout", "nothing received")
    recording_terminal(cp, "T00001", 0)  # back before the old connection's connection_lost
    t.connection_lost(None)
    assert term.logoff_upto == 2, "its bye was not taken as a logoff"


async def test_a_bye_unread_behind_the_bound_is_a_logoff_when_a_failover_closes_the_terminal(tmp_path: Path) -> None:
    """A terminal with no standby session, at its bound (the CP reads it no more), says bye and
    waits for the CP to close; the active dies and the grant takes the classic path, closing the
    connection. Its bye, unread in the kernel, was thrown away with it: not a logoff, and its
    acknowledged messages waited for a next logon under that name instead of going to the new
    active (protocol.md, `bye`: handed over across a failover)."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=4)
    try:
        a, t = await _at_bound_with_an_active(cp, [{"t": "msg", "id": i, "data": "x"} for i in range(1, 6)])
        b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
        t.send({"t": "bye"})  # (a write of its own, after the bound: in the kernel's receive queue)
        await t.fs.drain()
        await a.close()  # the active dies
        # (its link's end seen by the CP first: a request ahead of it is refused, the active alive)
        await until_cp_status(cp, lambda st: st["state"] == "no_active")
        b.send({"t": "switchover", "reason": "test: the active is gone", "planned": False, "peer_closed": True})
        await b.wait(lambda m: m["t"] == "switch_granted")
        delivered = await b.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00001", 4)
        assert sorted(m["id"] for m in delivered) == [1, 2, 3, 4], delivered
        await t.wait_closed()
    finally:
        cp.stop()
