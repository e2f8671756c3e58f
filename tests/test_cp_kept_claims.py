"""What a resuming terminal's hello may claim (docs/protocol.md §1, `hello`'s `first`): a claim
never covers a reply to an earlier run's message, so one written to a connection that dropped
before the terminal read it is sent again, whether or not the run knew of the earlier one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import HeldJournal, cp_core, fake_host, recording_terminal
from tests.support.keptreplies import connect_hsbterm, delivered, earlier_run, replies, until

pytestmark = pytest.mark.timeout(30)


async def test_a_run_that_never_learned_of_an_earlier_run_still_gets_its_reply(tmp_path: Path) -> None:
    """Run 1 of T00001 sends message 1 and dies without a bye, its record not yet durable.
    Run 2, hsbterm, is welcomed with last_acked 0, so it learns of the earlier run only from
    ack 1, which comes on that connection with its own ack 1000: the connection drops with both
    unread. Its next welcome says last_acked 1000 (its own), and it gets reply 1000 there; the
    active then answers message 1, its reply written to that connection, which drops before run
    2 reads it. Run 2's next hello said last_reply 1000, every reply up to it, and the CP, which
    had written reply 1 to a connection of the terminal, forgot it: no run ever got it. Now the
    hello says `first` 1000, claiming nothing below, and the CP sends reply 1 again."""
    from hsb.term.client import TerminalClient
    from hsb.term.load import _report
    from hsb.term.loadstats import LoadStats

    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    hold = HeldJournal(cp, ("a",))  # the messages' records not durable until released
    run1 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    run1.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    run1.connection_lost(None)  # no bye: gone in an outage, say
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T00001", stats, base=1000, check_data=True, keepalive=0)
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed (last_acked 0)")
    cp.host_open(h, "T00001", "active", {})
    a = c.submit()
    await until(lambda: cp.terms["T00001"].last_acked == a, "run 2's message read by the CP")
    hold.release()  # ack 1 and ack 1000 written to run 2's connection...
    p.transport.close()  # ...which drops before run 2 reads them
    await until(lambda: c.state == 0 and p.closed, "the drop seen by both sides")
    assert not c.earlier_run and {("T00001", 1), ("T00001", a)} <= delivered(h)
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed again (last_acked 1000)")
    cp.host_reply(h, "T00001", a, c.payload(a))
    await until(lambda: not c.outstanding, "run 2's reply read")
    cp.host_reply(h, "T00001", 1, "r1")  # written to run 2's connection...
    p.transport.close()  # ...which drops before run 2 reads it
    await until(lambda: c.state == 0 and p.closed, "the drop seen by both sides")
    assert not c.earlier_run and c.earlier_run_replies == 0
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed a third time")
    await until(lambda: c.earlier_run_replies == 1, "reply 1 reaches run 2", within=2.0)
    c.bye()
    await until(lambda: p.closed, "the logoff")
    r = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])
    assert r.ok and r.unexpected == 0 and r.duplicates == 0 and r.earlier_run_replies == 1, r.failures
    assert not cp.terms["T00001"].replies and cp.counts.kept == 0  # confirmed: let go


async def test_a_hello_claims_no_reply_below_its_first_id(tmp_path: Path) -> None:
    """Run 1 sends 1 and dies without a bye; run 2 sends 1000, and the active answers both: the
    replies are written to run 2's connection (1 after 1000) and it confirms having read reply
    1000 only. The connection drops. Its next hello says last_reply 1000 and first 1000: the CP
    took the claim as covering reply 1, written to a connection of the terminal, and forgot it.
    Now a hello's claim stops short of every reply kept below its `first`: reply 1 goes again,
    marked (1000, claimed, does not), and stays kept until a confirm covers it."""
    cp, h = await earlier_run(tmp_path, (1,))
    run2 = recording_terminal(cp, "T00001", 0, first=1000)
    cp.host_open(h, "T00001", "active", {})
    run2.data_received(encode({"t": "msg", "id": 1000, "data": "m"}))
    await until(lambda: ("T00001", 1000) in delivered(h), "run 2's message delivered")
    cp.host_reply(h, "T00001", 1000, "r")
    cp.host_reply(h, "T00001", 1, "r1")
    assert [m["id"] for m in replies(run2)] == [1000, 1]
    run2.data_received(encode({"t": "confirm", "id": 1000, "seen": 1}))
    run2.connection_lost(None)  # before run 2 read reply 1
    term = cp.terms["T00001"]
    again = recording_terminal(cp, "T00001", 1000, first=1000)
    assert replies(again) == [{"t": "reply", "id": 1, "data": "r1", "resent": True}]
    assert 1 in term.replies and term.confirmed == 0  # the hello taken short of it
    again.data_received(encode({"t": "confirm", "id": 1000, "seen": 1}))
    assert not term.replies and cp.counts.kept == 0 and term.confirmed == 1000


@pytest.mark.parametrize("first", [0, -1, "1", True, 2**63])
async def test_a_hello_whose_first_is_not_an_id_is_refused(tmp_path: Path, first: Any) -> None:
    """`first` is a message id (1 and up): anything else is `bad_hello`, as a bad last_reply is."""
    from hsb.cp.terminal_link import TerminalProtocol
    from tests.support.transports import RecordingTransport, recorded, stand_in

    cp = cp_core(tmp_path, 2)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0, "first": first}))
    p.flush()
    errors = [m for m in recorded(p.transport).frames() if m.get("t") == "error"]
    assert [m["code"] for m in errors] == ["bad_hello"] and "first" in errors[0]["msg"], recorded(p.transport).frames()
    assert cp.terms["T00001"].conn is None


async def test_a_confirm_settles_the_replies_up_to_it_and_keeps_the_next(tmp_path: Path) -> None:
    """Replies 1, 2 and 3 kept for a resuming terminal; it confirms 1: reply 1 is let go, 2 and
    3 stay kept (a confirm one short would keep 1 a while; one past it would drop a reply the
    terminal may never have read), and its next hello saying last_reply 1 gets them again."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    term = cp.terms["T00001"]
    for mid in (1, 2, 3):
        t.data_received(encode({"t": "msg", "id": mid, "data": f"m{mid}"}))
        cp.host_reply(h, "T00001", mid, f"r{mid}")
    assert sorted(term.replies) == [1, 2, 3] and cp.counts.kept == 3
    t.data_received(encode({"t": "confirm", "id": 1}))
    assert sorted(term.replies) == [2, 3] and cp.counts.kept == 2, "a confirm of 1 let go of another reply"
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001", 1)
    assert [(m["id"], m["data"]) for m in replies(t2)] == [(2, "r2"), (3, "r3")], "the replies not confirmed, sent again"


async def test_a_hello_claim_does_not_settle_a_reply_made_while_the_terminal_was_away(tmp_path: Path) -> None:
    """Message 1's reply is made while its terminal is away (kept, never written to it); the
    terminal comes back saying last_reply 5 (a claim that covers an earlier run's ids, without
    `first`): it cannot hold reply 1, which goes to it and stays kept until a confirm after it."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    t.connection_lost(None)
    cp.host_reply(h, "T00001", 1, "r1")
    term = cp.terms["T00001"]
    assert 1 in term.replies and not term.replies[1].sent
    t2 = recording_terminal(cp, "T00001", 5)
    assert [m["id"] for m in replies(t2)] == [1], "the reply made while it was away was not sent"
    assert 1 in term.replies, "settled by a claim that could not cover it"
    t2.data_received(encode({"t": "confirm", "id": 1}))
    assert not term.replies and cp.counts.kept == 0


async def test_a_reply_whose_discard_was_written_before_a_resuming_hello_is_kept(tmp_path: Path) -> None:
    """Message 1 of a terminal that does not resume is answered: its reply waits for its discard
    ("d") to be durable. Meanwhile the terminal comes back resuming: the reply goes to it once the
    discard is durable, and is kept until confirmed, so a connection that drops before the terminal
    read it loses nothing (the next hello gets it again)."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    j = HeldJournal(cp, ("d",))
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    cp.host_reply(h, "T00001", 1, "r1")
    assert j.held, "the discard on its way"
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001", 0)
    j.release()
    assert [m["id"] for m in replies(t2)] == [1]
    assert 1 in cp.terms["T00001"].replies, "sent to a resuming terminal and kept nowhere"
    t2.connection_lost(None)  # dropped before the terminal read it
    t3 = recording_terminal(cp, "T00001", 0)
    assert [m["id"] for m in replies(t3)] == [1], "the reply was lost with the connection"
