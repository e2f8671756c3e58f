"""The bound of replies a resuming terminal has not confirmed (docs/protocol.md §1): at it the
CP reads on for the terminal's confirmations and holds its other frames back (`park`). A terminal
that sent ahead of its replies is served, not closed; one that restarts is not stuck behind the
replies kept for its earlier run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.keptreplies import connect_hsbterm, delivered, earlier_run, replies, until
from tests.support.procs import start_cp

pytestmark = pytest.mark.timeout(30)


def _acks(p: Any) -> list[int]:
    p.flush()
    return [m["id"] for m in p.transport.frames() if m.get("t") == "ack"]


def _errors(p: Any) -> list[str]:
    p.flush()
    return [m["code"] for m in p.transport.frames() if m.get("t") == "error"]


@pytest.mark.parametrize("bound", [4, 256])
async def test_a_terminal_that_sent_ahead_of_its_replies_is_served_not_closed(tmp_path: Path, bound: int) -> None:
    """A resuming terminal sends twice the held bound back to back (allowed: at the bound the CP
    stops reading it). The active answers the first half, which brings its unconfirmed replies
    to the bound; the other half, sent before any reply could reach it, is read then and held
    back. It was closed with `unconfirmed_replies` as if it had sent all that after its replies
    and never confirmed, though its confirm was the next frame. It waits now, and its confirm
    lets the rest in, in order."""
    cp = cp_core(tmp_path, 2, cp=f"held_bound = {bound}\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, 2 * bound + 1)))
    assert _acks(p) == list(range(1, bound + 1))  # the held bound: the rest not read yet
    for i in range(1, bound + 1):
        cp.host_reply(h, "T00001", i, f"r{i}")
    await until(lambda: p.parked is not None and len(p.parked) == bound or p.closed, "the second half read and held back")
    assert not p.closed and _errors(p) == [], _errors(p)
    p.data_received(encode({"t": "confirm", "id": bound}))
    await until(lambda: len(_acks(p)) == 2 * bound, "the held-back messages taken after the confirm")
    assert _acks(p) == list(range(1, 2 * bound + 1)) and p.parked is None


async def test_over_sockets_a_terminal_that_sent_ahead_confirms_and_is_served(tmp_path: Path) -> None:
    """The same through hsbcpd's sockets: the second half waits in the kernel while the CP is at
    its held bound, is read once the first half is answered and held back; the terminal's
    confirm, written when the replies reach it, comes after it and lets it in."""
    cp = start_cp(tmp_path / "cp", terminals=2, held_bound=8)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = {"protocol": "hsb1", "codepage": "utf-8"}
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        for i in range(1, 17):
            t.send({"t": "msg", "id": i, "data": f"m{i}"})
        first = await a.wait_count(lambda m: m["t"] == "deliver", 8)
        for m in first:
            a.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": f"r{m['id']}", "epoch": a.epoch})
        await t.wait_count(lambda m: m["t"] == "reply", 8)
        t.send({"t": "confirm", "id": 8})
        rest = await a.wait_count(lambda m: m["t"] == "deliver", 16)
        assert [m["id"] for m in rest] == list(range(1, 17))
        assert not [m for m in t.inbox if m["t"] == "error"], t.inbox[-3:]
        assert [m["id"] for m in t.inbox if m["t"] == "ack"] == list(range(1, 17))
    finally:
        cp.stop()


async def test_small_frames_held_back_without_a_confirm_are_bounded_by_their_memory(tmp_path: Path) -> None:
    """Frames held back count their own memory, not only their data: a terminal that never
    confirms and sends small messages is closed once they take held_bytes (here 8 KiB: 28 small
    frames), with none of them acknowledged."""
    from hsb.cp.terminal_link import PARKED_FRAME_COST

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\nheld_bytes = 8192\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, 5)))
    for i in range(1, 5):
        cp.host_reply(h, "T00001", i, f"r{i}")
    assert p.parked is not None
    sent = 4
    while not p.closed and sent < 1000:
        sent += 1
        p.data_received(encode({"t": "msg", "id": sent, "data": "x"}))
    assert _errors(p) == ["unconfirmed_replies"]
    assert sent - 4 == -(-8192 // (PARKED_FRAME_COST + 1)), sent
    assert _acks(p) == [1, 2, 3, 4]


async def test_a_restarted_terminal_is_not_stuck_behind_the_replies_kept_for_its_earlier_run(tmp_path: Path) -> None:
    """Run 1 of a resuming terminal sends up to its held bound and dies without a bye; the
    active answers all of it meanwhile, so the replies kept for it reach the bound. Run 2, a
    fresh hsbterm, says hello with last_reply 0 and gets them, resent; they are an earlier run's,
    which it ignored without confirming them, and it could confirm nothing else: none of its own
    messages was taken, each waited behind those replies, for good (a window below the bound
    never fills what is held back). Now hsbterm confirms the earlier run's replies it got: its
    messages are taken and answered, and its verdict is clean."""
    from hsb.term.client import TerminalClient
    from hsb.term.loadstats import LoadStats

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\n")
    h = fake_host(cp, "host-a", "active", record=True)
    run1 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    run1.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, 5)))
    run1.connection_lost(None)  # no bye: gone in an outage, say
    for i in range(1, 5):
        cp.host_reply(h, "T00001", i, f"r{i}")
    term = cp.terms["T00001"]
    assert sorted(term.replies) == [1, 2, 3, 4]  # kept for it: the bound
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T00001", stats, base=1000, window=3, check_data=True, keepalive=0)
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed")
    cp.host_open(h, "T00001", "active", {})
    await _run2_served(cp, h, c, p, stats)


async def test_an_earlier_runs_replies_made_after_the_new_run_logged_on_are_confirmed_not_unexpected(tmp_path: Path) -> None:
    """Run 1 sends up to its held bound, all delivered to the active, and dies without a bye;
    run 2, a fresh hsbterm, is welcomed and only then does the active answer run 1's messages.
    The CP sends those replies as they come, unmarked (nothing was kept at the hello to resend).
    hsbterm counted them unexpected (an id it never sent, not marked resent) and never confirmed
    them, so the CP kept them, at its bound: run 2's messages were never taken. Now they are an
    earlier run's, resent or not: not judged, confirmed, and run 2 is served."""
    from hsb.term.client import TerminalClient
    from hsb.term.loadstats import LoadStats

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\n")
    h = fake_host(cp, "host-a", "active", record=True)
    run1 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    run1.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, 5)))
    await until(lambda: all(("T00001", i) in delivered(h) for i in range(1, 5)), "run 1's messages delivered")
    run1.connection_lost(None)  # no bye; the active still working on them
    term = cp.terms["T00001"]
    assert not term.replies
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T00001", stats, base=1000, window=3, check_data=True, keepalive=0)
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed")
    cp.host_open(h, "T00001", "active", {})
    for i in range(1, 5):  # the active answers run 1's messages now
        cp.host_reply(h, "T00001", i, f"r{i}")
    await until(lambda: c.earlier_run_replies + c.unexpected == 4, "run 1's replies reach run 2")
    assert c.unexpected == 0 and c.earlier_run_replies == 4
    await _run2_served(cp, h, c, p, stats)


async def _run2_served(cp: Any, h: Any, c: Any, p: Any, stats: Any) -> None:
    """Run 2 of T00001 sends three messages, each delivered and answered, and logs off: its
    verdict is clean, and run 1's four replies were an earlier run's, confirmed and let go."""
    from hsb.term.load import _report

    ids = [c.submit() for _ in range(3)]
    assert ids == [1000, 1001, 1002]
    await until(lambda: all(("T00001", i) in delivered(h) for i in ids), "run 2's messages delivered to the active")
    for i in ids:
        cp.host_reply(h, "T00001", i, c.payload(i))
    await until(lambda: not c.outstanding, "run 2's messages answered")
    c.bye()
    await until(lambda: p.closed, "the logoff")
    r = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])
    assert r.ok and r.earlier_run_replies == 4 and r.unexpected == 0, r.failures
    term = cp.terms["T00001"]
    assert not term.replies and cp.counts.kept == 0  # the earlier run's replies confirmed: let go


@pytest.mark.parametrize("own", [False, True], ids=["earlier-runs-only", "with-its-own"])
async def test_a_hello_taken_short_of_an_unanswered_message_resends_nothing_it_said_it_holds(tmp_path: Path, own: bool) -> None:
    """Run 1 sends two messages and dies without a bye; run 2 logs on, and the active answers
    run 1's second message first: run 2 gets that reply and confirms it (with its own, when it
    has one), but the CP takes the confirmation short of the first message, still unanswered,
    and keeps the replies. Run 2's connection drops, and its hello says it holds them (a terminal
    that knows the earlier run's ids may: hsbterm says 0, below): the CP took that hello short of
    the same message and sent every kept reply again, marked resent, those the hello named
    included. Now the CP sends again only what is above the hello's last_reply; the confirm that
    follows the answer to the first message lets them all go."""
    cp, h = await earlier_run(tmp_path, (1, 2))
    run2 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    cp.host_reply(h, "T00001", 2, "r2")  # answered before message 1
    held = 2
    if own:
        held = 1000
        run2.data_received(encode({"t": "msg", "id": held, "data": "m"}))
        await until(lambda: ("T00001", held) in delivered(h), "run 2's message delivered")
        cp.host_reply(h, "T00001", held, "r")
    assert [m["id"] for m in replies(run2)] == ([2, held] if own else [2])
    run2.data_received(encode({"t": "confirm", "id": held}))
    assert sorted(cp.terms["T00001"].replies) == ([2, held] if own else [2])  # taken short of 1
    run2.connection_lost(None)  # the connection drops
    again = recording_terminal(cp, "T00001", held)
    assert replies(again) == []  # it said it holds them
    cp.host_open(h, "T00001", "active", {})
    cp.host_reply(h, "T00001", 1, "r1")
    assert replies(again) == [{"t": "reply", "id": 1, "data": "r1"}]
    again.data_received(encode({"t": "confirm", "id": held}))
    assert not cp.terms["T00001"].replies and cp.counts.kept == 0  # all confirmed: let go


@pytest.mark.parametrize("first", ["earlier", "both", "own"])
async def test_an_earlier_runs_replies_made_while_the_next_run_was_away_reach_it(tmp_path: Path, first: str) -> None:
    """Run 1 sends three messages and dies without a bye; run 2 logs on and the active answers
    run 1's third first (`earlier`), or a message of run 2 (`own`), or both: run 2 gets them and
    confirms, the CP taking that short of message 1, still unanswered. Run 2's connection drops,
    and the active answers run 1's messages while it is away: kept for it, sent to nobody. Run
    2's next hello said last_reply 3 (or its own id): every reply up to it, though it never had
    the others, and the CP forgot them unsent. It says 0 now (it cannot know which of an earlier
    run's messages are still to be answered): the CP sends every reply it kept, and run 2 gets
    all three, ignoring (once) its own it had."""
    from hsb.term.client import TerminalClient
    from hsb.term.load import _report
    from hsb.term.loadstats import LoadStats

    cp, h = await earlier_run(tmp_path, (1, 2, 3))
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T00001", stats, base=1000, check_data=True, keepalive=0)
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed")
    cp.host_open(h, "T00001", "active", {})
    away = [1, 2]
    if first == "own":
        away.append(3)
    else:
        cp.host_reply(h, "T00001", 3, "r3")  # answered before 1 and 2
        await until(lambda: c.earlier_run_replies == 1, "run 1's third reply reaches run 2")
    if first != "earlier":
        a = c.submit()
        await until(lambda: ("T00001", a) in delivered(h), "run 2's message delivered")
        cp.host_reply(h, "T00001", a, c.payload(a))
        await until(lambda: not c.outstanding, "run 2's message answered")
    p.transport.close()  # the connection drops
    await until(lambda: c.state == 0 and p.closed, "the drop seen by both sides")
    for i in away:  # answered while run 2 is away
        cp.host_reply(h, "T00001", i, f"r{i}")
    assert set(away) <= set(cp.terms["T00001"].replies)  # kept for it
    p = connect_hsbterm(cp, c)
    await until(lambda: c.state == 3, "run 2 welcomed again")
    await until(lambda: c.earlier_run_replies == 3, "the replies made while it was away reach run 2", within=2.0)
    c.bye()
    await until(lambda: p.closed, "the logoff")
    r = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])
    assert r.unexpected == 0 and r.duplicates == 0 and r.bad_data == 0 and r.earlier_run_replies == 3, r.failures
    assert r.resent_ignored == (0 if first == "earlier" else 1)  # its own reply, kept (taken short of 1)
    assert not cp.terms["T00001"].replies and cp.counts.kept == 0  # all confirmed: let go


@pytest.mark.parametrize("claim", [3, 1000], ids=["claims-the-earlier-runs", "claims-its-own"])
async def test_a_hello_that_claims_replies_never_sent_gets_them(tmp_path: Path, claim: int) -> None:
    """Run 1 sends three messages and dies without a bye; run 2 logs on, a raw terminal, and the
    active answers run 1's third (and run 2's own 1000) first: run 2 gets them and confirms, the
    CP taking that short of message 1, still unanswered. Run 2's connection drops, and the active
    answers 1 and 2 while it is away: kept, sent to nobody. Run 2's next hello says last_reply 3
    (or 1000): every reply up to it, counting the earlier run's, as the protocol lets it. The CP
    took that as a confirm and forgot 1 and 2, which no run ever received. Now a hello's claim
    never lets it forget a reply it never sent: it sends them, resent, and keeps them until the
    next confirm, which lets all go."""
    cp, h = await earlier_run(tmp_path, (1, 2, 3))
    run2 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    cp.host_reply(h, "T00001", 3, "r3")  # answered before 1 and 2
    got = [3]
    if claim == 1000:
        run2.data_received(encode({"t": "msg", "id": 1000, "data": "m"}))
        await until(lambda: ("T00001", 1000) in delivered(h), "run 2's message delivered")
        cp.host_reply(h, "T00001", 1000, "r")
        got.append(1000)
    assert [m["id"] for m in replies(run2)] == got
    run2.data_received(encode({"t": "confirm", "id": claim}))
    term = cp.terms["T00001"]
    assert sorted(term.replies) == got  # taken short of 1
    run2.connection_lost(None)  # the connection drops
    for i in (1, 2):  # answered while run 2 is away: kept, sent to nobody
        cp.host_reply(h, "T00001", i, f"r{i}")
    again = recording_terminal(cp, "T00001", claim)
    assert replies(again) == [{"t": "reply", "id": i, "data": f"r{i}", "resent": True} for i in (1, 2)]  # not those it had
    assert sorted(term.replies) == [1, 2, *got]  # none forgotten: the hello taken short of 1
    again.data_received(encode({"t": "confirm", "id": claim}))  # the next confirm covers them all
    assert not term.replies and cp.counts.kept == 0 and term.confirmed == claim


async def test_a_reply_recovered_after_a_cp_restart_is_sent_again_whatever_the_hello_says(tmp_path: Path) -> None:
    """A restarted CP recovers kept replies from its journal: whether its process before ever
    wrote them to the terminal it cannot know (one made while the terminal was away was not).
    They go at the hello, resent, those at or below its last_reply too (the terminal ignores one
    it holds), and stay kept until the confirm that follows; one sent at that hello counts as
    sent from then on (a later hello claiming it has it sent no more)."""
    from hsb.cp.journal.format import encode as record
    from hsb.cp.journal.recovery import recover, segment_name

    d = tmp_path / "j"
    d.mkdir()
    recs = [["ck", 3, "host-a", 0, {}]]
    for i in (1, 2, 3):
        recs += [["a", "T00001", i, f"m{i}"], ["r", "T00001", i, f"r{i}"]]
    (d / segment_name(1, 0)).write_bytes(b"".join(record(r) for r in recs))
    cp = cp_core(tmp_path, 2)
    cp.restore(recover(d))
    term = cp.terms["T00001"]
    assert sorted(term.replies) == [1, 2, 3] and term.confirmed == 0
    p = recording_terminal(cp, "T00001", 2)
    assert [(m["id"], m.get("resent")) for m in replies(p)] == [(1, True), (2, True), (3, True)]
    assert sorted(term.replies) == [1, 2, 3] and term.confirmed == 0  # the hello taken short of 1
    p.connection_lost(None)  # before it confirmed
    q = recording_terminal(cp, "T00001", 3)
    assert replies(q) == [] and not term.replies and cp.counts.kept == 0  # sent before: its claim settles them


async def _run2_after_an_earlier_run(tmp_path: Path) -> tuple[Any, Any, Any]:
    """A CP core and its active (cp, h): run 1 of T00001 sent message 1 and died without a bye,
    the active still working on it; run 2 (hello 0) sent 1000, delivered. (cp, h, run 2)."""
    cp, h = await earlier_run(tmp_path, (1,))
    run2 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    run2.data_received(encode({"t": "msg", "id": 1000, "data": "m"}))
    await until(lambda: ("T00001", 1000) in delivered(h), "run 2's message delivered")
    return cp, h, run2


@pytest.mark.parametrize("then", ["dropped", "read"])
async def test_a_confirm_does_not_cover_an_earlier_runs_reply_still_on_its_way(tmp_path: Path, then: str) -> None:
    """Run 1 sends 1 and dies without a bye; run 2 says hello with last_reply 0, sends 1000 and
    gets its reply, and confirms its own 1000, which covers the earlier run's 1 (all below its
    own ids). Before the CP reads that confirm, the active answers 1 and its reply is written to
    run 2's connection. The CP took the confirm as covering it and forgot it; the connection
    dropped before run 2 read it, and nothing was sent at the next hello: reply 1 was lost. The
    confirm now says how many reply frames the terminal had read on the connection (`seen`: 1,
    reply 1000): reply 1, written after, is kept (`dropped`: sent again, marked, at the next
    hello), until a confirm that has seen it (`read`) lets it go."""
    cp, h, run2 = await _run2_after_an_earlier_run(tmp_path)
    cp.host_reply(h, "T00001", 1000, "r")
    cp.host_reply(h, "T00001", 1, "r1")  # written to run 2's connection, not read yet
    assert [m["id"] for m in replies(run2)] == [1000, 1]
    run2.data_received(encode({"t": "confirm", "id": 1000, "seen": 1}))  # written when it had read reply 1000 only
    term = cp.terms["T00001"]
    assert 1 in term.replies and term.confirmed == 0  # on its way when the confirm was written: kept
    if then == "read":
        run2.data_received(encode({"t": "confirm", "id": 1000, "seen": 2}))  # once it has read reply 1
        assert not term.replies and cp.counts.kept == 0 and term.confirmed == 1000
        return
    run2.connection_lost(None)  # before run 2 read reply 1
    again = recording_terminal(cp, "T00001", 0)
    assert replies(again) == [{"t": "reply", "id": i, "data": d, "resent": True} for i, d in ((1, "r1"), (1000, "r"))]
    again.data_received(encode({"t": "confirm", "id": 1000, "seen": 2}))
    assert not term.replies and cp.counts.kept == 0 and term.confirmed == 1000


async def test_a_reply_whose_connection_is_found_gone_as_it_is_written_counts_as_never_sent(tmp_path: Path) -> None:
    """Run 1 sends message 1 and dies without a bye; run 2 (hello 0) sends 1000 and gets its
    reply. Its connection is not read (its held bound) and its terminal has left: the CP finds
    that out only as it writes the answer to run 1's message (`_lost_if_unread_gone`), so nothing
    is written. The kept reply was marked sent all the same, and the next hello, claiming 1000
    (every reply up to it, as the protocol lets it count an earlier run's), let the CP forget
    reply 1, which no run ever received. It counts as never sent now: that hello gets it."""
    cp, h, run2 = await _run2_after_an_earlier_run(tmp_path)
    cp.host_reply(h, "T00001", 1000, "r")
    assert [m["id"] for m in replies(run2)] == [1000]
    run2.reading_paused = True  # (its held bound: not read)
    looks = iter([False, True])  # gone by the kernel's word at the second look: as the reply is written
    run2.peer_gone = lambda: next(looks, True)
    cp.host_reply(h, "T00001", 1, "r1")
    assert run2.closed and [m["id"] for m in replies(run2)] == [1000]  # nothing written
    again = recording_terminal(cp, "T00001", 1000)
    assert [m["id"] for m in replies(again)] == [1]  # sent, marked, whatever the hello claimed
    again.data_received(encode({"t": "confirm", "id": 1000}))
    assert not cp.terms["T00001"].replies
