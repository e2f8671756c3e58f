"""The CP's terminal side (hsb/cp/terminal_side.py; docs/protocol.md §1, hsb/cp/logons.py), the
rest of its mutation audit (tests/test_cp_terminal_side_mutants.py has the first part), each
test naming a behaviour no test held: a bye waiting in the logoff storm's queue keeps its
connection unread until its turn, whatever the terminal's bounds do meanwhile (its kept replies
reaching the bound, a reload letting it go); and past the CP's own bound a terminal is not read
while the active's link is closing, as when there is no active (its messages wait for the next
one either way)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsb.cp import logons
from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.inproc import until
from tests.test_cp_logon_edges import _logged_on  # (resuming: its replies kept until confirmed)

pytestmark = pytest.mark.timeout(30)


async def test_a_bye_waiting_in_a_logoff_storm_is_not_read_past_by_the_terminals_bounds(tmp_path: Path) -> None:
    """held_bound 2. A terminal has reply 1 kept (not confirmed); in a logoff storm (a burst of
    byes in this turn) it sends message 2, its bye and message 3 in one write: the bye waits in
    the queue and its connection is not read until its turn (hsb.cp.logons). Reply 2 brings its
    kept replies to the bound, and a reload raising the bound lets it go: neither reads the
    connection before the bye's turn (message 3 would be taken ahead of the bye). In its turn the
    bye is a logoff, once."""
    n = logons.BURST + 1
    cp, a, names, protos = await _logged_on(tmp_path, n, cp="held_bound = 2\n")
    last, name = protos[-1], names[-1]
    t = cp.terms[name]
    last.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    cp.host_reply(a, name, 1, "r1")
    assert list(t.replies) == [1] and not t.held and not t.paused
    await asyncio.sleep(0)  # a new turn: the burst counts afresh
    for p in protos[:-1]:  # a burst of byes in one turn
        p.data_received(encode({"t": "bye"}))
    last.data_received(b"".join(encode(f) for f in ({"t": "msg", "id": 2, "data": "m2"}, {"t": "bye"}, {"t": "msg", "id": 3, "data": "m3"})))
    assert last.bye_waiting and last.reading_paused and list(t.held) == [2] and not t.leaving
    cp.host_reply(a, name, 2, "r2")  # its kept replies at the bound: only its confirmations would be read
    assert t.paused and len(t.replies) == 2
    assert last.reading_paused, "read while its bye waits for its turn (kept replies at the bound)"
    cp.held_bound = 10  # a reload raises the bound (hsb.cp.server: then recheck_slowed)
    cp.recheck_slowed()
    assert not t.paused
    assert last.reading_paused, "read while its bye waits for its turn (let go by a reload)"
    assert 3 not in t.held and not t.leaving
    await until(lambda: not cp.logons.queue, "the bye taken in its turn")
    assert t.leaving
    a.flush()
    closed = [f["reason"] for f in a.transport.frames() if f["t"] == "session_closed" and f["terminal"] == name]
    assert closed == ["logoff"]


async def test_past_the_cps_own_bound_a_terminal_is_not_read_while_the_actives_link_is_closing(tmp_path: Path) -> None:
    """held_total_bytes 4096, reached by T00002's message to a slow active. The CP closes the
    active's link (its connection_lost still to come): no active answers now, so a terminal
    without a session there, whose message waits for the next active either way, is not read
    past the CP's own bound, as when there is no active at all (a terminal is read past it only
    when a serving active would take its messages with its logoff)."""
    cp = cp_core(tmp_path, 3, cp="held_total_bytes = 4096\n")
    a = fake_host(cp, "host-a", "active", record=True)
    t2 = recording_terminal(cp, "T00002", last_reply=None)
    cp.host_open(a, "T00002", "active", {})
    t1 = recording_terminal(cp, "T00001", last_reply=None)
    T1 = cp.terms["T00001"]
    t2.data_received(encode({"t": "msg", "id": 1, "data": "y" * 5000}))
    assert cp.total_over
    a.close()  # (a protocol error, an idle timeout: closed here, not yet lost)
    assert cp.active is a and not a.usable
    t1.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert list(T1.held) == [1]
    assert T1.paused and t1.reading_paused, "read past the CP's own bound with no active to answer"
