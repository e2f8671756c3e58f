"""The logon storm's queue (hsb.cp.logons) at its edges, in-process: first in, first out holds
in every later turn too (a new hello never overtakes one that waits); a terminal's only waiting
connection is logged on in its turn even when its terminal has closed it meanwhile (only one
superseded by a newer connection is dropped); and a stopping CP takes the byes and losses it
reads past a burst at once, as it said it would, not in slices it no longer runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.cp import logons
from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host
from tests.support.inproc import until
from tests.support.transports import RecordingTransport, recorded, stand_in

pytestmark = pytest.mark.timeout(30)


def _hello(cp: Any, name: str) -> Any:
    """A connection whose hello as `name` has been read (taken now, or queued)."""
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport(name)))
    p.data_received(encode({"t": "hello", "terminal": name, "last_reply": 0}))
    return p


async def _logged_on(tmp_path: Path, n: int, cp: str = "") -> tuple[Any, Any, list[str], list[Any]]:
    """`n` terminals logged on with active sessions at a recording host-a (`cp`: lines for the
    CP's [cp] table); a new turn begun."""
    core = cp_core(tmp_path, n, cp=cp)
    a = fake_host(core, "host-a", "active", record=True)
    names = sorted(core.terms)
    protos = [_hello(core, name) for name in names]
    await until(lambda: core.connected == n, "every logon")
    for name in names:
        core.host_open(a, name, "active", {})
    await asyncio.sleep(0)  # a new turn: the burst counts afresh
    return core, a, names, protos


async def test_a_hello_read_in_a_later_turn_waits_behind_the_queued_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The burst counts afresh each turn, but while anything waits every new hello joins the
    queue: a terminal reading fast does not overtake those that came first."""
    cp = cp_core(tmp_path, logons.BURST + 4)
    fake_host(cp, "host-a", "active")
    names = sorted(cp.terms)
    run = logons.Logons._run
    monkeypatch.setattr(logons.Logons, "_run", lambda self: None)  # the queue held for a turn
    first = [_hello(cp, n) for n in names[:-1]]
    assert len(cp.logons.queue) == 3
    await asyncio.sleep(0)  # a new turn: nothing taken inline yet in it
    assert cp.logons.inline == 0
    late = _hello(cp, names[-1])
    assert late.term is None and late.reading_paused, "a hello of a later turn overtook the queued ones"
    assert len(cp.logons.queue) == 4
    monkeypatch.setattr(logons.Logons, "_run", run)
    cp.logons._slice = None
    run(cp.logons)
    await until(lambda: cp.connected == len(names), "every logon")
    assert all(p.term is not None for p in [*first, late])


async def test_a_terminals_only_waiting_connection_is_logged_on_though_its_peer_has_gone(tmp_path: Path) -> None:
    """Only a connection its terminal has replaced is dropped at its turn; the terminal's newest
    one is logged on even if it has closed it meanwhile (what it sent first is taken, and its
    end read after it), as outside a storm."""
    cp = cp_core(tmp_path, logons.BURST + 1)
    fake_host(cp, "host-a", "active")
    names = sorted(cp.terms)
    protos = [_hello(cp, n) for n in names]
    last = protos[-1]
    assert last.reading_paused and cp.logons.newest == {names[-1]: last}
    last.peer_gone = lambda: True  # (its terminal closed it: the kernel says so, unread here)
    await until(lambda: not cp.logons.queue, "the queue worked off")
    assert not last.closed and last.term is cp.terms[names[-1]] and cp.terms[names[-1]].conn is last
    last.flush()
    assert [f["t"] for f in last.transport.frames()][:1] == ["welcome"]
    assert cp.connected == len(names) and not cp.logons.newest


async def test_a_stopping_cp_logs_off_at_once_the_byes_it_reads_past_a_burst(tmp_path: Path) -> None:
    """After `close()` (the stop) a bye is a logoff now: queued, it would wait for slices of a
    queue that no longer goes on."""
    cp, a, names, protos = await _logged_on(tmp_path, logons.BURST + 5)
    cp.logons.close()
    for p in protos:  # one poll's worth of byes during the stop
        p.data_received(encode({"t": "bye"}))
    assert all(cp.terms[n].leaving for n in names), "a bye past the burst was not logged off at the stop"
    assert not cp.logons.queue and cp.logons.deferred_byes == 0


async def test_a_stopping_cp_closes_at_once_the_sessions_of_connections_lost_past_a_burst(tmp_path: Path) -> None:
    """After `close()` a lost connection's session is closed now (a disconnect at the active),
    not queued behind a queue that no longer goes on."""
    cp, a, names, protos = await _logged_on(tmp_path, logons.BURST + 5)
    cp.logons.close()
    for p in protos:  # every connection ends in one turn (the stop's aborts)
        p.transport.close()
        p.connection_lost(None)
    assert cp.connected == 0 and all(t.conn is None for t in cp.terms.values())
    assert cp.counts.active == 0 and not cp.logons.queue and cp.logons.deferred_losses == 0
    await asyncio.sleep(0)  # the host link's frames written
    closed = [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed" and f["reason"] == "disconnect"]
    assert sorted(closed) == names


async def test_a_queued_bye_has_what_its_terminal_sent_after_it_read_in_its_turn(tmp_path: Path) -> None:
    """Its connection stops reading while the bye waits, and reads on once the bye is taken (it
    stays open until the messages before the bye are answered): a message sent after the bye
    (the protocol forbids it, a terminal may still) is taken as the logoff's, as it is when the
    bye is taken inline, not left unread for good."""
    cp, a, names, protos = await _logged_on(tmp_path, logons.BURST + 1)
    for p in protos[:-1]:
        p.data_received(encode({"t": "bye"}))
    last, t = protos[-1], cp.terms[names[-1]]
    last.data_received(b"".join(encode(f) for f in ({"t": "msg", "id": 1, "data": "before"}, {"t": "bye"}, {"t": "msg", "id": 2, "data": "after"})))
    assert last.bye_waiting and last.reading_paused and list(t.held) == [1]
    await until(lambda: not cp.logons.queue, "the bye taken")
    assert t.leaving and not last.closed  # open until its message is answered
    await until(lambda: 2 in t.held, "the message after the bye taken")
    assert t.bye_upto == 2 and not last.reading_paused


async def test_a_queued_hellos_last_reply_is_kept_for_its_turn(tmp_path: Path) -> None:
    """A resuming terminal whose hello waits: in its turn it is taken with the `last_reply` it
    said, so a reply it already holds is not sent again (taken as not resuming, it would be)."""
    cp = cp_core(tmp_path, logons.BURST + 1)
    h = fake_host(cp, "host-a", "active")
    names = sorted(cp.terms)
    last = names[-1]
    first = _hello(cp, last)
    await until(lambda: first.term is not None, "its first logon")
    cp.host_open(h, last, "active", {})
    first.data_received(encode({"t": "msg", "id": 1, "data": "m"}))
    cp.host_reply(h, last, 1, "r1")
    first.flush()
    assert [(f["id"], f.get("resent")) for f in first.transport.frames() if f["t"] == "reply"] == [(1, None)]
    first.transport.close()
    first.connection_lost(None)
    await asyncio.sleep(0)  # a new turn
    for n in names[:-1]:
        _hello(cp, n)
    from hsb.cp.terminal_link import TerminalProtocol

    again = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    again.connection_made(stand_in(RecordingTransport(last)))
    again.data_received(encode({"t": "hello", "terminal": last, "last_reply": 1}))  # it holds reply 1
    assert again.term is None and cp.logons.queue, "not queued"
    await until(lambda: again.term is not None, "its logon in its turn")
    again.flush()
    got = recorded(again.transport).frames()
    assert [f["t"] for f in got][:1] == ["welcome"]
    assert [f for f in got if f["t"] == "reply"] == [], "a reply it confirmed in its hello was sent again"
    assert cp.terms[last].resuming and not cp.terms[last].replies


async def test_a_queued_logon_refused_by_a_protocol_error_tells_its_terminal_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol error raised by a logon taken in its turn ends that connection as it would
    inline: with an `error` frame naming its code (the terminal's to read), not a bare reset."""
    from hsb.wire.framing import ProtocolError

    cp = cp_core(tmp_path, logons.BURST + 2)
    fake_host(cp, "host-a", "active")
    names = sorted(cp.terms)
    bad = names[-1]
    real = cp.terminal_hello

    def hello(proto: Any, name: str, last_reply: Any = None) -> None:
        if name == bad:
            raise ProtocolError("bad_fields", "refused in its turn")
        real(proto, name, last_reply)

    monkeypatch.setattr(cp, "terminal_hello", hello)
    protos = [_hello(cp, n) for n in names]
    await until(lambda: not cp.logons.queue and protos[-1].closed, "the queue worked off")
    errors = [f for f in protos[-1].transport.frames() if f["t"] == "error"]
    assert [(f["code"], f["msg"]) for f in errors] == [("bad_fields", "refused in its turn")]
    assert cp.connected == len(names) - 1 and cp.terms[bad].conn is None


async def test_a_waiting_hello_superseded_by_a_reconnect_is_dropped_without_a_session(tmp_path: Path) -> None:
    """A terminal whose queued connection it gave up on (its peer gone, unread here) connected
    again behind it: at its turn the old connection is dropped, not logged on. The active is
    asked for one session only, and no connection is counted gone (mutant: the superseded
    hello logged on, then taken over by the reconnect: a second session_request and a
    `connections_gone`)."""
    cp = cp_core(tmp_path, logons.BURST + 5)
    a = fake_host(cp, "host-a", "active", record=True)
    names = sorted(cp.terms)
    again = names[logons.BURST + 1]
    protos = [_hello(cp, n) for n in names]
    first = protos[names.index(again)]
    assert first in [q[0] for q in cp.logons.queue]
    first.peer_gone = lambda: True  # (its terminal closed it: the kernel says so, unread here)
    second = _hello(cp, again)  # queued behind the rest
    await until(lambda: not cp.logons.queue and cp.connected == len(names), "the queue worked off")
    assert first.closed and not second.closed and cp.terms[again].conn is second
    asked = [f for f in a.transport.frames() if f["t"] == "session_request" and f["terminal"] == again]
    assert len(asked) == 1, asked
    assert cp.counters["connections_gone"] == 0
    assert not first.transport.frames()  # never welcomed
