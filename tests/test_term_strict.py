"""The strict verdict's harder cases, fed frame by frame to a real TerminalClient
(tests/support/termfeed.py): replies the CP sends again after a restart (`resent`) or an earlier
run's, replies sent twice, acknowledgements of ids never sent or a last_acked that contradicts
what was sent, and nothing after the bye. The ledger's replies and books:
tests/test_term_strict_books.py; the run's verdict: tests/test_term_strict_run.py; the terminal
across the CP's absences: tests/test_term_strict_cp_away.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from tests.support.termfeed import BASE, client, connect, connect_to, feed, verdict
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


def _answered_out_of_order(c: TerminalClient) -> tuple[int, int]:
    """Two messages sent and acked; only the second answered; then the CP goes and comes back.
    The terminal's new hello says last_reply 0 (the first reply is missing), so the CP may
    send the second reply again, marked resent."""
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})
    c.connection_lost(None)
    connect(c, last_acked=b)
    assert c.told_last_reply == 0
    return a, b


async def test_a_resent_reply_the_terminal_has_is_ignored_only_with_the_same_data() -> None:
    c, stats = client()
    a, b = _answered_out_of_order(c)
    feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True})  # once more on this connection
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures
    c, stats = client()
    a, b = _answered_out_of_order(c)
    feed(c, {"t": "reply", "id": b, "data": "someone else's answer", "resent": True})
    r = verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and any(f.startswith("bad data") for f in r.failures), r.failures


@pytest.mark.parametrize("resume", [True, False])
async def test_a_reply_sent_twice_on_one_connection_is_a_duplicate_resent_or_not(resume: bool) -> None:
    """Only a reply the terminal held when it said hello may come again marked resent: a CP
    that sends a reply twice on one connection, the second copy marked, sends a duplicate (this
    once passed, as an ignored resend, on every terminal's first connection)."""
    c, stats = client(resume=resume)
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1 and r.resent_ignored == 0, r.failures


async def test_a_resent_reply_up_to_the_hellos_last_reply_is_a_duplicate() -> None:
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    connect(c, last_acked=a)
    assert c.told_last_reply == a  # the CP was told this terminal holds it
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def _confirmed_again(tr: RecordingTransport) -> None:
    """Until a `confirm` is written to `tr` (its timer: 50 ms), within 2 s."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not [f for f in tr.frames() if f["t"] == "confirm"]:
        assert loop.time() - t0 < 2.0, "never confirmed again"
        await asyncio.sleep(0.005)


async def test_a_resent_reply_up_to_the_hellos_last_reply_from_a_restarted_cp_is_ignored_and_confirmed_again() -> None:
    """A restarted CP (another `cp` in the welcome) cannot know which of the replies it recovered
    its process before wrote to the terminal: it sends them all again, marked, those the hello
    said it holds too, and keeps them until a confirm covers them. hsbterm counted one at or below
    its hello's last_reply a duplicate, and never confirmed it again (its confirm had gone). Now
    it ignores each once and confirms it again; a second copy is still a duplicate."""
    c, stats = client()
    c.connection_lost(None)
    connect_to(c, "a")
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    assert c.confirmed == a
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [a]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": a, "cp": "b"})  # another CP process
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    await _confirmed_again(tr)
    assert [f["id"] for f in tr.frames() if f["t"] == "confirm"] == [a]
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})  # once more on this connection
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def test_the_reply_to_a_recovered_message_on_a_later_connection_to_the_restarted_cp_is_ignored_and_confirmed_again() -> None:
    """A restarted CP redelivers the messages it recovered from its journal and sends each reply,
    marked, whatever a hello said (its process before may never have sent it), when the active
    answers: possibly after the terminal's connection dropped and a new one said hello to the
    same process, its last_reply covering that id. hsbterm took the resend as a duplicate (it
    allowed one below the hello's last_reply only on the first connection to the new process).
    Now one up to that welcome's last_acked is ignored, and confirmed again, once while that
    process serves (a third connection to it that gets it again: a duplicate); above it, the CP
    recovered nothing: still a duplicate."""
    c, stats = client()
    c.connection_lost(None)
    connect_to(c, "a")
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": a, "cp": "b"})  # restarted: a recovered
    feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})
    c.connection_lost(None)  # before the active answered a again
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [b]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": b, "cp": "b"})  # the same process
    assert c.told_last_reply == b
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    await _confirmed_again(tr)
    assert [(f["id"], f["seen"]) for f in tr.frames() if f["t"] == "confirm"] == [(b, 1)]  # seen: the reply frames read here
    feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True})  # not recovered: the hello said it holds it
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures
    # a third connection to the same process, its hello covering a: that process sent a's reply
    # once already (it sends each recovered one once), so a second copy is a duplicate
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [b]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": b, "cp": "b"})
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 2 and r.resent_ignored == 1, r.failures


async def test_a_resent_reply_for_an_id_never_sent_is_unexpected_unless_an_earlier_runs() -> None:
    c, stats = client(stride=10)  # this terminal's ids: 1000, 1010, ...; 1001 is another terminal's
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    feed(c, {"t": "reply", "id": BASE - 5, "data": "x", "resent": True})  # below this run's ids: an earlier run's
    r = verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 1, r.failures
    feed(c, {"t": "reply", "id": BASE + 1, "data": "x", "resent": True})  # another terminal's id
    feed(c, {"t": "reply", "id": BASE + 500, "data": "x", "resent": True})  # not sent yet
    r = verdict(c, stats)
    assert not r.ok and r.unexpected == 2, r.failures


async def test_an_earlier_runs_resent_replies_are_confirmed_and_not_claimed_at_the_next_hello() -> None:
    """Replies the CP kept for an earlier run of this terminal (it died without a bye) come
    resent after this run's first hello. Ignored, never confirmed, they stayed kept for good, and
    at the CP's bound of kept replies none of this run's messages was taken: this run, with no
    reply of its own, could confirm nothing. It confirms them now. Its next hello said it holds
    every reply up to the highest, and the CP would forget unsent one of the earlier run's made
    while it was away (it cannot know their ids): it says 0 at every hello now, and ignores once
    each what the CP sends again that it holds, its own and the earlier run's."""
    c, stats = client()
    assert c.transport is not None
    tr: Any = c.transport
    feed(c, {"t": "reply", "id": BASE - 9, "data": "x", "resent": True}, {"t": "reply", "id": BASE - 5, "data": "y", "resent": True})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while BASE - 5 not in [f["id"] for f in tr.frames() if f["t"] == "confirm"]:
        assert loop.time() - t0 < 5, tr.frames()
        await asyncio.sleep(0.01)
    assert all(f["id"] <= BASE - 5 for f in tr.frames() if f["t"] == "confirm")
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)
    assert tr.frames()[0] == {"t": "hello", "terminal": "T1", "last_reply": 0, "first": BASE}
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    feed(c, {"t": "reply", "id": BASE - 5, "data": "y", "resent": True})  # one it has: counted once
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 2, r.failures
    c.connection_lost(None)
    tr = connect(c, last_acked=a)
    assert tr.frames()[0]["last_reply"] == 0  # none of its own claimed either
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})  # twice on one connection
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def test_an_earlier_runs_reply_made_after_this_run_logged_on_is_confirmed_not_unexpected() -> None:
    """The active may answer an earlier run's messages (it died without a bye) after this run
    logged on: the CP sends those replies as they come, not marked resent. They were counted
    unexpected and never confirmed (the CP kept them, at its bound for good). They are an earlier
    run's now, confirmed; one the CP sends after a confirm of ours covered it (it took that
    confirm short of a message then unanswered: answered out of order) is confirmed again. An
    id at or above the run's first that it never sent is still unexpected."""
    c, stats = client(stride=10)
    tr: Any = c.transport

    def confirms() -> list[int]:
        return [f["id"] for f in tr.frames() if f["t"] == "confirm"]

    async def until(n: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while len(confirms()) < n:
            assert loop.time() - t0 < 5, tr.frames()
            await asyncio.sleep(0.01)

    feed(c, {"t": "reply", "id": BASE - 5, "data": "x"})
    await until(1)
    assert confirms() == [BASE - 5]
    feed(c, {"t": "reply", "id": BASE - 7, "data": "y"})  # answered after BASE - 5: the CP kept both
    await until(2)
    assert confirms() == [BASE - 5, BASE - 5]
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    tr = connect(c, last_acked=a)
    assert c.told_last_reply == 0  # (an earlier run's replies came: it claims none)
    feed(c, {"t": "reply", "id": BASE - 3, "data": "z"})  # sent as it came
    r = verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 3 and r.unexpected == 0, r.failures
    feed(c, {"t": "reply", "id": BASE + 1, "data": "x"}, {"t": "reply", "id": BASE + 500, "data": "x"})
    r = verdict(c, stats)
    assert not r.ok and r.unexpected == 2 and r.earlier_run_replies == 3, r.failures


async def test_nothing_follows_the_bye_on_the_wire() -> None:
    """A terminal that logs off while its welcome is still to come writes its bye; the welcome
    then came and had it send what was not acknowledged, after the bye (stats.resent counting
    them). Logged on, a reply the CP still owed it after its bye was confirmed after it, and a
    message submitted then was sent. Nothing follows the bye now."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    c.submit()  # not logged on yet: sent after the welcome
    c.bye()
    feed(c, {"t": "welcome", "terminal": "T1", "last_acked": 0})
    assert [f["t"] for f in tr.frames()] == ["hello", "bye"], tr.frames()
    assert stats.resent == 0
    c, stats = client()
    tr = c.transport  # type: ignore[assignment]
    a = c.submit()
    feed(c, {"t": "ack", "id": a})
    c.bye()
    feed(c, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "reply", "id": BASE - 5, "data": "x"})  # owed; an earlier run's
    c.submit()
    c.bye()
    assert [f["t"] for f in tr.frames()] == ["hello", "msg", "bye"], tr.frames()
    assert c.confirm_timer is None  # (nor one to come)


async def test_an_ack_for_an_id_never_sent_fails_the_run() -> None:
    c, stats = client(stride=10)
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    feed(c, {"t": "ack", "id": a})  # a second ack of its own id (a resend acked again): fine
    assert verdict(c, stats).ok
    feed(c, {"t": "ack", "id": BASE - 7})  # an earlier run's message, made durable after this hello: fine
    assert verdict(c, stats).ok
    feed(c, {"t": "ack", "id": BASE + 3})
    r = verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and any(f.startswith("unexpected acks: 1") for f in r.failures), r.failures


async def test_a_last_acked_above_what_the_terminal_sent_is_an_unexpected_ack() -> None:
    """The welcome's last_acked says what the CP acknowledged for this terminal: one of its own
    ids (after a CP restart), or an earlier run's (below the run's first id). An id of this run
    it never sent (it passed silently) is an unexpected ack, as one in an `ack` frame is."""
    c, stats = client(stride=10)
    c.connection_lost(None)
    connect(c, last_acked=BASE - 3)  # an earlier run's (nothing of this run acknowledged yet): fine
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    connect(c, last_acked=a)  # its own id again (a CP restarted, a reconnect): fine
    assert verdict(c, stats).ok
    c.connection_lost(None)
    connect(c, last_acked=BASE + 10_000)  # far above anything it sent
    r = verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and any(f.startswith("unexpected acks: 1") for f in r.failures), r.failures
    c.connection_lost(None)
    connect(c, last_acked=BASE + 1)  # below its last id, but not one of its ids (another terminal's)
    assert verdict(c, stats).unexpected_acks == 2


def test_another_terminals_ids_are_not_taken_for_an_earlier_runs() -> None:
    """In a run, terminal i's ids start at the run's first id + i: the first ids of the terminals
    before it lie below its own first id but are this run's. An ack or a resent reply of one of
    them reaching this terminal is misdelivered, not an earlier run's to be excused."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T4", stats, base=BASE + 3, floor=BASE, stride=4, idx=3, check_data=True)
    connect(c)
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    feed(c, {"t": "ack", "id": BASE + 1})  # terminal T2's first id
    feed(c, {"t": "reply", "id": BASE + 2, "data": "x", "resent": True})  # T3's
    r = verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and r.unexpected == 1, r.failures
    feed(c, {"t": "ack", "id": BASE - 1})  # below the run's first id: an earlier run's, excused
    assert verdict(c, stats).unexpected_acks == 1


async def test_a_last_acked_below_an_id_the_cp_acknowledged_fails_the_run() -> None:
    """After a reconnect (a CP restart) the welcome's last_acked is below an id the CP had
    acknowledged: that ack was not durable (the CP forgot it). If the message is answered later
    all the same (the terminal resends it), nothing else would notice: it fails the run."""
    c, stats = client(stride=10)
    a = c.submit()
    b = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    connect(c, last_acked=a)  # b was acknowledged, and is forgotten
    feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})  # resent, answered
    r = verdict(c, stats)
    assert not r.ok and r.acks_forgotten == 1 and any(f.startswith("acks forgotten: 1") for f in r.failures), r.failures


async def test_an_earlier_runs_reply_resent_after_a_hello_that_holds_this_runs_is_confirmed() -> None:
    """A hello that says this terminal holds a reply of this run claims no earlier run's: it says
    `first`, this run's first id, and the CP sends again at each hello every reply it keeps
    below it (one written to a connection that dropped before this run read it, and whose ack
    was lost with it, so the run never learned of the earlier one). Such a reply, resent below
    the hello's last_reply, was unexpected; it is an earlier run's now, confirmed."""
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    tr = connect(c, last_acked=a)
    assert tr.frames()[0] == {"t": "hello", "terminal": "T1", "last_reply": a, "first": BASE}
    feed(c, {"t": "reply", "id": BASE - 5, "data": "T2:0", "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.unexpected == 0 and r.earlier_run_replies == 1, r.failures
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not [f for f in tr.frames() if f["t"] == "confirm"]:  # (its confirm batched: 50 ms)
        assert loop.time() - t0 < 5, tr.frames()
        await asyncio.sleep(0.01)
    assert [f for f in tr.frames() if f["t"] == "confirm"] == [{"t": "confirm", "id": a, "seen": 1}]
