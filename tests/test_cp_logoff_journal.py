"""A logoff survives a CP restart (docs/protocol.md `bye`, docs/cp-journal.md `o`): the messages
a terminal acknowledged before it logged off are answered without it, even when hsbcpd is killed
and started again before they were; they do not wait for a next logon that may never come.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsb.cp import logons
from hsb.cp.journal.format import encode
from hsb.cp.journal.recovery import Recovered, apply, recover, segment_name
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.hostclient import FakeHost, FakeTerminal, cp_status, logged_off_holding, until_cp_status
from tests.support.journal import records
from tests.support.procs import restart_cp, start_cp, until


@pytest.mark.parametrize("resume", [False, True])
async def test_a_terminal_that_logged_off_holding_messages_has_them_answered_after_a_cp_restart(tmp_path: Path, resume: bool) -> None:
    """No active: three messages held; the terminal says bye and goes; hsbcpd is SIGKILLed and
    started again on its journal. When an active comes, the three go to it, marked redelivered,
    without the terminal logging on again; their replies have nobody to go to (counted)."""
    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    try:
        await logged_off_holding(cp, resume=resume)
        # the logoff's record is lazy (it rides with the next group, or 5 ms later): durable first
        await until(lambda: ["o", "T00001", 3] in records(d / "cp-journal"), what="the logoff's record in the journal")
        cp = restart_cp(cp)  # SIGKILL, then hsbcpd again on the same journal
        st = await cp_status(cp)
        assert st["held_messages"] == 3 and st["terminals"]["connected"] == 0
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        delivered = await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00001", 3)
        assert sorted(m["id"] for m in delivered) == [1, 2, 3]
        assert all(m.get("redelivered") for m in delivered), delivered  # (perhaps processed before the crash)
        for m in delivered:
            a.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": "ok", "epoch": a.epoch})
        st = await until_cp_status(cp, lambda st: st["held_messages"] == 0)
        assert st["counters"]["replies_after_logoff"] == 3
        assert st["held_bytes"]["kept"] == 0 and st["held_bytes"]["total"] == 0
    finally:
        cp.stop()


@pytest.mark.parametrize("restart", [False, True])
async def test_the_replies_a_logoff_left_behind_go_to_nobody_even_after_the_terminal_logs_on_again(tmp_path: Path, restart: bool) -> None:
    """Bye with two messages held (no active), then a new logon under that name before they
    were answered, and a third message. The two are the logoff's: answered at the active and
    told nobody (not even the new logon, which knows nothing of them); the third is the new
    run's and reaches it. The same with hsbcpd SIGKILLed and restarted meanwhile: a restart
    changes nothing a crash-free run could not have done."""
    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    try:
        await logged_off_holding(cp, n=2, resume=True)
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        await t.wait(lambda m: m["t"] == "welcome")
        t.send({"t": "msg", "id": 3, "data": "m3"})
        await t.wait(lambda m: m["t"] == "ack" and m["id"] == 3)
        if restart:
            await until(lambda: ["o", "T00001", 2] in records(d / "cp-journal"), what="the logoff's record in the journal")
            t.fs.writer.close()
            await t.wait_closed()
            cp = restart_cp(cp)
            t = await FakeTerminal.connect(cp.info["terminal"], "T00001", hello=False)
            t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
            await t.wait(lambda m: m["t"] == "welcome")
        a = await FakeHost.connect(cp.info["host"], "host-a")
        a.auto_open = {"kind": "till"}  # (before it registers: the session is asked for at once)
        a.auto_reply = True
        await a.register("active")
        await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "T00001", 3)
        reply = await t.wait(lambda m: m["t"] == "reply")
        assert reply["id"] == 3 and reply["data"] == "m3"
        st = await until_cp_status(cp, lambda st: st["held_messages"] == 0)
        assert st["counters"]["replies_after_logoff"] == 2
        assert [m["id"] for m in t.inbox if m["t"] == "reply"] == [3], t.inbox
    finally:
        cp.stop()


def _recovered(*recs: list[Any]) -> Recovered:
    r = Recovered()
    for rec in recs:
        apply(r, rec, 1)
    return r


def test_recovery_reads_a_logoff_from_its_record_and_from_a_later_segments_checkpoint() -> None:
    a1, a2 = ["a", "T1", 1, "x"], ["a", "T1", 2, "y"]
    assert _recovered(a1, a2, ["o", "T1", 2]).leaving("T1")
    assert not _recovered(a1, a2).leaving("T1")
    # a message sent after the logoff is a later logon's: not leaving (the logoff's mark stays)
    r = _recovered(a1, ["o", "T1", 1], a2)
    assert not r.leaving("T1") and r.logoff == {"T1": 1}
    # answered: nothing sent since its bye, still leaving (there is simply nothing to answer)
    assert _recovered(a1, ["o", "T1", 1], ["d", "T1", 1]).leaving("T1")
    # the segment holding the "o" compacted away: the next segment's checkpoint says it
    ck = ["ck", 1, None, 1, {"T1": 2}, {"history": [], "paused": False, "logoff": {"T1": 2}}]
    assert _recovered(ck, a1, a2).leaving("T1")
    # a later checkpoint that leaves it out (it held nothing then) does not undo it: records
    # read before may still be the logoff's
    ck_none = ["ck", 1, None, 1, {"T1": 2}, {"history": [], "paused": False, "logoff": {}}]
    r = _recovered(a1, a2, ["o", "T1", 2], ck_none)
    assert r.logoff == {"T1": 2} and r.leaving("T1")


def test_a_checkpoint_names_the_terminals_logged_off_holding_messages(tmp_path: Path) -> None:
    """Compaction drops a segment whose "o" record is the only word of a logoff: every new
    segment's checkpoint carries the logoffs still holding messages."""
    cp = cp_core(tmp_path, 3)
    t1, t2 = cp.terms["T00001"], cp.terms["T00002"]
    cp.restore(_recovered(["a", "T00001", 1, "x"], ["a", "T00001", 2, "y"], ["o", "T00001", 2], ["a", "T00002", 1, "z"]))
    assert t1.leaving and not t2.leaving and t1.logoff_upto == 2
    assert cp._checkpoint()[5]["logoff"] == {"T00001": 2}
    cp.logged_off(t2)
    assert cp._checkpoint()[5]["logoff"] == {"T00001": 2, "T00002": 1}
    t3 = cp.terms["T00003"]
    cp.logged_off(t3)  # nothing held: nothing to answer without it, nothing to write
    assert not t3.logoff_upto and "T00003" not in cp._checkpoint()[5]["logoff"]


def test_replies_kept_for_a_terminal_that_logged_off_are_settled_at_a_restart(tmp_path: Path) -> None:
    """A reply kept for it (its confirmation lost with the crash) and a message still held: it
    confirms nothing more, so the reply is settled as at its connection's loss, the message kept."""
    cp = cp_core(tmp_path, 2)
    r = _recovered(["a", "T00001", 1, "x"], ["r", "T00001", 1, "X"], ["a", "T00001", 2, "y"], ["o", "T00001", 2])
    cp.restore(r)
    t = cp.terms["T00001"]
    assert t.leaving and list(t.held) == [2] and not t.replies
    assert cp.counts.kept == 0 and cp.counts.held == 1


_REC = st.one_of(
    st.tuples(st.just("a"), st.sampled_from(["T1", "T2"]), st.integers(1, 6), st.just("m")).map(list),
    st.tuples(st.just("r"), st.sampled_from(["T1", "T2"]), st.integers(1, 6), st.just("R")).map(list),
    st.tuples(st.just("d"), st.sampled_from(["T1", "T2"]), st.integers(1, 6)).map(list),
    st.tuples(st.just("c"), st.sampled_from(["T1", "T2"]), st.integers(1, 6)).map(list),
    st.tuples(st.just("o"), st.sampled_from(["T1", "T2"]), st.integers(1, 6)).map(list),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(_REC, max_size=30))
def test_reading_a_segment_gives_the_state_applying_its_records_one_by_one_gives(tmp_path: Path, recs: list[list[Any]]) -> None:
    """recover() reads the common records inline (speed at a restart under load); the state it
    builds is the one `apply()` builds record by record, whatever the records."""
    d = tmp_path / f"j{abs(hash(str(recs)))}"
    d.mkdir()
    ck: list[Any] = ["ck", 1, None, 0, {}, {"history": [], "paused": False}]
    (d / segment_name(1)).write_bytes(b"".join(encode(x) for x in [ck, *recs]))
    got = recover(d, truncate=False)
    want = _recovered(ck, *recs)

    def view(r: Recovered) -> Any:
        held = {t: {m: h.data for m, h in v.items()} for t, v in r.held.items() if v}
        kept = {t: {m: k.data for m, k in v.items()} for t, v in r.replies.items() if v}
        return held, kept, r.confirmed, r.last_acked, r.logoff, [r.leaving(t) for t in ("T1", "T2")]

    assert view(got) == view(want)


async def _one_sent(tmp_path: Path, resume: int | None) -> tuple[Any, Any, Any]:
    """A CP core with an active, T00001 logged on (`resume`: its hello's last_reply) and its
    message 1 sent: (cp, the active's link, the terminal's state)."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    recording_terminal(cp, "T00001", resume)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    return cp, h, t


def _replies(p: Any) -> list[int]:
    p.flush()
    return [m["id"] for m in p.transport.frames() if m.get("t") == "reply"]


@pytest.mark.parametrize("resume", [None, 0])
async def test_a_logoffs_reply_reaches_no_later_run_even_one_that_went_meanwhile(tmp_path: Path, resume: int | None) -> None:
    """Run 1 sends 1 and logs off (1 goes to the active without a session) and goes; run 2
    logs on and goes without a bye; the reply to 1 comes: nobody's (counted), not kept as a
    reply for run 3."""
    cp, h, t = await _one_sent(tmp_path, resume)
    cp.terminal_bye(t)
    assert t.leaving and t.bye_upto == 1 and t.held[1].delivered_epoch
    cp.terminal_lost(t)
    recording_terminal(cp, "T00001", resume)  # run 2 ...
    cp.terminal_lost(t)  # ... goes without bye
    cp.host_reply(h, "T00001", 1, "R1")
    p3 = recording_terminal(cp, "T00001", resume)
    assert _replies(p3) == [] and not t.replies
    assert cp.counters["replies_after_logoff"] == 1


@pytest.mark.parametrize("resume", [None, 0])
async def test_a_second_bye_does_not_hand_the_first_runs_reply_to_the_second(tmp_path: Path, resume: int | None) -> None:
    """Run 1 sends 1, logs off and goes; run 2 sends 2 and logs off, its connection open while 2
    waits. The reply to 1 goes to nobody, the reply to 2 to run 2's connection."""
    cp = cp_core(tmp_path, 2)
    recording_terminal(cp, "T00001", resume)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_bye(t)
    cp.terminal_lost(t)
    p2 = recording_terminal(cp, "T00001", resume)
    cp.terminal_msg(t, 2, "m2")
    cp.terminal_bye(t)
    assert t.conn is p2 and t.bye_upto == 2 and t.logoff_upto == 1
    h = fake_host(cp, "host-a", "active")
    cp.host_reply(h, "T00001", 1, "R1")
    cp.host_reply(h, "T00001", 2, "R2")
    assert _replies(p2) == [2] and cp.counters["replies_after_logoff"] == 1


async def test_a_restart_keeps_a_later_runs_unconfirmed_reply(tmp_path: Path) -> None:
    """Journal: 1 sent, bye, then a new run sent 2, answered first and not yet confirmed. After
    the restart the terminal is not leaving (it sent after its bye): reply 1 goes to nobody,
    reply 2 stays kept and reaches run 2 when it resumes."""
    cp = cp_core(tmp_path, 2)
    cp.restore(_recovered(["a", "T00001", 1, "m1"], ["o", "T00001", 1], ["a", "T00001", 2, "m2"], ["r", "T00001", 2, "R2"]))
    t = cp.terms["T00001"]
    assert not t.leaving and t.logoff_upto == 1 and list(t.replies) == [2]
    h = fake_host(cp, "host-a", "active")
    cp.host_reply(h, "T00001", 1, "R1")
    p = recording_terminal(cp, "T00001", 1)  # run 2 back, holding replies up to 1 only
    assert _replies(p) == [2] and cp.counters["replies_after_logoff"] == 1


@pytest.mark.parametrize("resume", [None, 0])
async def test_a_logoffs_kept_reply_is_never_resent_to_a_later_run(tmp_path: Path, resume: int | None) -> None:
    """Run 1 sends 1 and 2 and logs off; the active answers 2 first (kept for run 1's open
    connection, 1 below it unanswered) and run 1 goes. Run 2 logs on: reply 2 is the logoff's,
    not resent to it; nor after a restart."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p1 = recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_msg(t, 2, "m2")
    cp.terminal_bye(t)
    cp.host_reply(h, "T00001", 2, "R2")
    assert _replies(p1) == [2]  # run 1's connection was still there
    cp.terminal_lost(t)
    assert t.logoff_upto == 2 and not t.replies and cp.counts.kept == 0
    p2 = recording_terminal(cp, "T00001", resume)
    assert _replies(p2) == []
    (tmp_path / "b").mkdir()
    cp2 = cp_core(tmp_path / "b", 2)
    cp2.restore(
        _recovered(["a", "T00001", 1, "m1"], ["a", "T00001", 2, "m2"], ["o", "T00001", 2], ["r", "T00001", 2, "R2"], ["a", "T00001", 3, "m3"])
    )
    t2 = cp2.terms["T00001"]
    assert not t2.leaving and t2.logoff_upto == 2 and not t2.replies
    assert _replies(recording_terminal(cp2, "T00001", 0)) == []
    # message 1 answered after the connection went: nothing held, so the next segment's
    # checkpoint leaves T00001 out; the forgotten reply 2 is still on disk before it
    cp.host_reply(h, "T00001", 1, "R1")
    (tmp_path / "c").mkdir()
    cp3 = cp_core(tmp_path / "c", 2)
    ck = cp._checkpoint()
    assert "T00001" not in ck[5]["logoff"]
    cp3.restore(_recovered(["a", "T00001", 1, "m1"], ["a", "T00001", 2, "m2"], ["o", "T00001", 2], ["r", "T00001", 2, "R2"], ["d", "T00001", 1], ck))
    t3 = cp3.terms["T00001"]
    assert not t3.replies, "a logoff's reply restored for a later run"
    assert _replies(recording_terminal(cp3, "T00001", 0)) == []


async def test_a_later_runs_confirmation_does_not_pass_a_logoffs_unanswered_messages(tmp_path: Path) -> None:
    """After a restart: 1 and 2 the logoff's, unanswered; run 2's 3 answered and kept. Run 2
    resumes saying it holds replies up to 3: its word says nothing of 1 and 2 (told nobody), so
    no confirmation passes them (a "c" 3 would drop 1 and 2 at a later recovery reading it first)."""
    cp = cp_core(tmp_path, 2)
    cp.restore(_recovered(["a", "T00001", 1, "m1"], ["a", "T00001", 2, "m2"], ["o", "T00001", 2], ["a", "T00001", 3, "m3"], ["r", "T00001", 3, "R3"]))
    t = cp.terms["T00001"]
    recording_terminal(cp, "T00001", 3)
    assert list(t.held) == [1, 2] and t.confirmed == 0


async def test_a_logoffs_message_goes_to_the_active_though_a_later_run_came_and_went(tmp_path: Path) -> None:
    """No active: 1 sent, bye, gone; run 2 logs on and goes without a bye; an active comes: 1 is
    handed to it without a session (it does not wait for a logon that may never come), as after
    a restart at that point."""
    cp = cp_core(tmp_path, 2)
    recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_bye(t)
    cp.terminal_lost(t)
    recording_terminal(cp, "T00001", 0)
    cp.terminal_lost(t)
    fake_host(cp, "host-a", "active")
    assert t.held[1].delivered_epoch == cp.epoch
    (tmp_path / "b").mkdir()
    cp2 = cp_core(tmp_path / "b", 2)
    cp2.restore(_recovered(["a", "T00001", 1, "m1"], ["o", "T00001", 1]))
    fake_host(cp2, "host-a", "active")
    assert cp2.terms["T00001"].held[1].delivered_epoch == cp2.epoch


async def test_a_message_after_bye_on_the_same_connection_is_the_logoffs_too(tmp_path: Path) -> None:
    """A terminal that sends after its bye (the protocol says nothing may follow it): that
    message is the logoff's as well, so a restart finds the terminal leaving, as it was."""
    cp = cp_core(tmp_path, 2)
    recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_bye(t)
    cp.terminal_msg(t, 2, "m2")
    assert t.bye_upto == 2
    assert _recovered(["a", "T00001", 1, "m1"], ["o", "T00001", 1], ["a", "T00001", 2, "m2"], ["o", "T00001", 2]).leaving("T00001")


SESSION_ATTRS = {"protocol": "hsb1"}


async def _flipped(cp: Any) -> None:
    while cp.flipping is not None:
        await asyncio.sleep(0)


async def test_a_bye_queued_in_a_storm_and_closed_by_a_failovers_classic_path_still_reaches_the_new_active(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2, standby_capable=False)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    p = recording_terminal(cp, "T00001", None)
    t = cp.terms["T00001"]
    cp.host_open(a, "T00001", "active", SESSION_ATTRS)
    cp.terminal_msg(t, 1, "m1")
    assert t.held[1].delivered_epoch == 1  # with host-a
    cp.logons.inline = logons.BURST  # a logoff storm: this bye waits its turn
    p.on_bye({"t": "bye"})
    assert p.bye_waiting and not t.leaving
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await _flipped(cp)  # classic path: conn.close() with its bye waiting -> logged_off
    assert t.leaving and p.closed
    p.connection_lost(None)
    for _ in range(20):
        await asyncio.sleep(0)  # the storm's queue worked off
    assert t.conn is None and t.logoff_upto == 1
    # the terminal logged off and went: nobody will come for message 1
    assert t.held[1].delivered_epoch == cp.epoch, "message 1 never handed to the new active"


async def test_a_refused_handover_hands_a_logoffs_messages_to_the_active_serving_on(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.host_release(a)
    cp.terminal_msg(t, 1, "m1")  # released: held, not delivered
    cp.terminal_bye(t)
    cp.terminal_lost(t)
    recording_terminal(cp, "T00001", 0)  # run 2 logs on ...
    cp.terminal_lost(t)  # ... and goes without a bye
    cp.host_handover(a)  # no standby: refused, host-a serves on
    assert not a.released
    assert t.held[1].delivered_epoch == cp.epoch, "the logoff's message waits for a logon that may never come"


async def test_a_logoffs_message_reaches_the_new_active_after_a_later_runs_classic_close(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2, standby_capable=False)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_bye(t)  # 1 handed to host-a without a session
    cp.terminal_lost(t)
    p2 = recording_terminal(cp, "T00001", 0)  # run 2, a session at host-a
    cp.host_open(a, "T00001", "active", SESSION_ATTRS)
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await _flipped(cp)  # classic path: run 2's connection closed
    p2.connection_lost(None)  # run 2 does not come back
    assert t.conn is None and t.active is None
    assert t.held[1].delivered_epoch == cp.epoch, "the logoff's message 1 never handed to host-b"


async def test_a_reply_that_finds_the_byes_unread_connection_gone_is_nobodys(tmp_path: Path) -> None:
    """Resuming run 1 sends 1, says bye in a logoff storm (queued, not read) and closes. The
    active's reply finds the connection gone: the logoff counts first, so the reply is nobody's,
    not kept, and run 2 never gets it."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    p1 = recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.host_open(a, "T00001", "active", SESSION_ATTRS)
    cp.terminal_msg(t, 1, "m1")
    cp.logons.inline = logons.BURST  # a logoff storm: this bye waits its turn, reading paused
    p1.on_bye({"t": "bye"})
    assert p1.bye_waiting and p1.reading_paused
    p1.peer_gone = lambda: True  # it closed its socket after the bye (unread: reading paused)
    cp.host_reply(a, "T00001", 1, "R1")
    assert t.conn is None and t.logoff_upto == 1
    assert not t.replies and cp.counts.kept == 0
    assert _replies(recording_terminal(cp, "T00001", 0)) == []


async def test_a_logoffs_reply_while_the_cp_closed_its_connection_is_nobodys(tmp_path: Path) -> None:
    """A non-resuming terminal sends 1 and says bye; the CP closes the connection (an idle
    timeout) and its last bytes are still going out when reply 1 comes: nobody's, not kept
    for the next logon."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p1 = recording_terminal(cp, "T00001", None)
    t = cp.terms["T00001"]
    cp.host_open(h, "T00001", "active", SESSION_ATTRS)
    cp.terminal_msg(t, 1, "m1")
    cp.terminal_bye(t)
    p1.close_with_error("idle_timeout", "nothing received for 30s")  # closed, not gone yet
    cp.host_reply(h, "T00001", 1, "R1")
    p1.connection_lost(None)
    assert t.logoff_upto == 1 and cp.counters["replies_after_logoff"] == 1
    assert _replies(recording_terminal(cp, "T00001", None)) == []


@pytest.mark.parametrize("resume", [0, None])
async def test_a_reply_to_a_recovered_message_made_before_its_terminal_is_back_is_kept(tmp_path: Path, resume: int | None) -> None:
    """After a restart the active answers recovered message 1 before its terminal is back.
    The reply is kept ("r", not in memory only): a resuming terminal whose first
    connection breaks before it reads the reply still gets it on its next hello; one that does
    not resume gets it once, marked resent, and it is settled."""
    cp = cp_core(tmp_path, 2)
    cp.restore(_recovered(["a", "T00001", 1, "m1"]))
    t = cp.terms["T00001"]
    h = fake_host(cp, "host-a", "active")
    cp.host_reply(h, "T00001", 1, "R1")
    assert not t.held and list(t.replies) == [1]
    p = recording_terminal(cp, "T00001", resume)
    assert _replies(p) == [1]
    if resume is None:
        assert not t.replies and cp.counts.kept == 0  # served once, settled
        return
    cp.terminal_lost(t)  # that connection broke before the terminal read the reply
    assert _replies(recording_terminal(cp, "T00001", 0)) == [1]


async def test_a_recovered_message_answered_to_a_terminal_back_without_resuming_is_marked_resent(tmp_path: Path) -> None:
    """Before the crash the terminal resumed and may hold reply 1 (sent at once, its "r" not
    yet durable). Back without last_reply, it gets the active's second answer marked resent."""
    cp = cp_core(tmp_path, 2)
    cp.restore(_recovered(["a", "T00001", 1, "m1"]))
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_reply(h, "T00001", 1, "R1")
    p.flush()
    got = [m for m in p.transport.frames() if m.get("t") == "reply"]
    assert [(m["id"], m.get("resent")) for m in got] == [(1, True)]


async def test_a_reply_that_finds_its_terminal_gone_is_kept_until_a_resuming_hello_confirms_it(tmp_path: Path) -> None:
    """A non-resuming run's reply, decided while it was connected, finds it gone once its record
    ("d") is durable: it is kept ("r", not in memory only); the terminal logs on resuming
    and gets it marked resent, and that connection breaks before it reads it: its next resuming
    hello gets it again, and its confirmation settles it."""
    from tests.support.cpcore import HeldJournal

    cp, h, t = await _one_sent(tmp_path, None)
    j = HeldJournal(cp, ("d",))
    cp.host_reply(h, "T00001", 1, "R1")
    cp.terminal_lost(t)
    j.release()
    assert list(t.replies) == [1] and not t.held
    assert _replies(recording_terminal(cp, "T00001", 0)) == [1]
    cp.terminal_lost(t)
    assert _replies(recording_terminal(cp, "T00001", 0)) == [1]
    cp.terminal_confirm(t, 1)
    assert not t.replies and cp.counts.kept == 0


async def test_a_reply_that_finds_a_non_resuming_terminal_gone_is_kept_in_the_journal(tmp_path: Path) -> None:
    """The same for a terminal that does not resume: the reply it left behind while the discard
    was written was once held in memory only, lost with the CP (an acknowledged message
    never answered), and sent unmarked after the replies kept for it. It is kept with a record of
    its own ("r", written at once: a CP started again recovers it), and the terminal's next
    hello settles it ("d") and then gets it marked resent, in id order with the others kept."""
    from tests.support.cpcore import HeldJournal

    cp, h, t = await _one_sent(tmp_path, None)
    cp.terminal_msg(t, 2, "m2")
    records: list[tuple[Any, bool]] = []
    real = cp.journal.append

    def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        records.append((payload, lazy))
        return int(real(payload, done, lazy))

    cp.journal.append = append
    j = HeldJournal(cp, ("d",))
    cp.host_reply(h, "T00001", 1, "R1")  # connected: "d", the reply to go once it is durable
    cp.terminal_lost(t)
    cp.host_reply(h, "T00001", 2, "R2")  # away: kept at once ("r")
    j.release()
    assert sorted(t.replies) == [1, 2] and not t.held
    assert (["r", "T00001", 1, "R1"], False) in records, records
    p = recording_terminal(cp, "T00001", None)
    assert not t.replies and cp.counts.kept == 0  # settled: a "d" each, the reply once it is durable
    p.flush()
    assert len(j.held) == 2 and not [m for m in p.transport.frames() if m.get("t") == "reply"]
    assert j.release() == 2
    p.flush()
    got = [(m["id"], m["data"], m.get("resent")) for m in p.transport.frames() if m.get("t") == "reply"]
    assert got == [(1, "R1", True), (2, "R2", True)], got


async def test_frames_held_back_behind_unconfirmed_replies_are_bounded_in_bytes(tmp_path: Path) -> None:
    """At the bound of kept replies the CP reads on for confirmations and holds the terminal's
    other frames back, up to as many as the bound: counted in frames only, 256 messages of a
    megabyte each were held for one terminal (no byte bound, none counted in the CP's total).
    They are bounded by held_bytes too: past it, the connection is closed with the error that
    says to confirm; none of them was acknowledged."""
    from hsb.wire.framing import encode as frame
    from tests.support.cpcore import cp_core, fake_host

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\nheld_bytes = 65536\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    t = cp.terms["T00001"]
    cp.host_open(h, "T00001", "active", {})
    for mid in range(1, 5):
        p.data_received(frame({"t": "msg", "id": mid, "data": f"m{mid}"}))
        cp.host_reply(h, "T00001", mid, f"r{mid}")
    assert len(t.replies) == 4 and p.parked is not None  # at the bound: parking
    for mid in range(5, 8):  # three frames (below the bound of 4), 30,000 bytes each
        if not p.closed:
            p.data_received(frame({"t": "msg", "id": mid, "data": "x" * 30_000}))
    p.flush()
    errors = [m for m in p.transport.frames() if m.get("t") == "error"]
    assert [e["code"] for e in errors] == ["unconfirmed_replies"], errors
    assert p.closed
    assert max(m["id"] for m in p.transport.frames() if m.get("t") == "ack") == 4


async def test_a_message_too_large_held_back_at_the_bound_is_the_terminals_error_not_a_traceback(tmp_path: Path) -> None:
    """A terminal parked behind its unconfirmed replies sends a message that fits the frame but
    not a delivery to a host: checked before it is held back, outside the dispatch's own catch,
    its ProtocolError escaped into the event loop (a traceback, the connection closed with no
    error frame, or left open with its reading stuck). It is the terminal's one-line error."""
    from hsb.wire.framing import encode as frame
    from tests.support.cpcore import cp_core, fake_host

    cp = cp_core(tmp_path, 2, cp="held_bound = 4\nmax_frame = 65536\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    for mid in range(1, 5):
        p.data_received(frame({"t": "msg", "id": mid, "data": f"m{mid}"}))
        cp.host_reply(h, "T00001", mid, f"r{mid}")
    assert p.parked is not None
    p.data_received(frame({"t": "msg", "id": 5, "data": "x" * (65536 - 900)}))  # fits max_frame, not a deliver
    p.flush()
    errors = [m for m in p.transport.frames() if m.get("t") == "error"]
    assert [e["code"] for e in errors] == ["message_too_large"] and "max_frame" in errors[0]["msg"], errors
    assert p.closed and max(m["id"] for m in p.transport.frames() if m.get("t") == "ack") == 4
