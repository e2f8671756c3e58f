"""The flip at a grant (hsb/cp/flip.py), the adoption (hsb/cp/adopt.py) and the takeover
(hsb/cp/taking_over.py), each test naming a behaviour that a mutation audit of those modules
found no test for: which terminals the pass takes first, the notices owed across two grants,
the marks, counts and switch record a flip leaves (a flip settled into a lost active marking
nothing), which adopted sessions expire and when, and what a takeover leaves behind (its
generation's beat, the snapshot's segment, the older generation's files, a torn tail)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import (
    HeldJournal,
    adopting_active,
    agree_counts,
    cp_core,
    fake_host,
    fake_terminal,
    flip_pair,
    flipped,
    recording_terminal,
    switch,
)

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}


def _batched(b: Any) -> list[tuple[str, int]]:
    """(terminal, id) of every message host `b` was handed in `deliver_batch` frames so far."""
    b.flush()
    return [(it[0], it[1]) for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]


def _pair_recording(tmp_path: Path, last_reply: int | None = 0) -> tuple[Any, Any, Any, Any, list[str]]:
    """One terminal, T01, logged on (its transport recording; `last_reply` None: one that does
    not resume) with sessions at A (active, keeping standby sessions at a planned switchover) and
    B (standby, recording)."""
    cp = cp_core(tmp_path, 1, width=2, cp="flip_slice = 4\n")
    a = fake_host(cp, "host-a", "active", keeps=True, record=True)
    b = fake_host(cp, "host-b", "standby", keeps=True, batch=64 * 1024, record=True)
    names = sorted(cp.terms)
    t = recording_terminal(cp, names[0], last_reply)
    cp.host_open(a, names[0], "active", ATTRS)
    cp.host_open(b, names[0], "standby", ATTRS)
    return cp, a, b, t, names


def _delivered(h: Any) -> list[tuple[int, bool]]:
    """(id, redelivered) of every message host `h` was handed so far, alone or batched."""
    h.flush()
    out: list[tuple[int, bool]] = []
    for f in h.transport.frames():
        if f["t"] == "deliver":
            out.append((f["id"], f["redelivered"]))
        elif f["t"] == "deliver_batch":
            out += [(it[1], it[3]) for it in f["items"]]
    return out


async def _until(cond: Any, what: str) -> None:
    """Until `cond()` holds (5 s at most, a turn of the loop at a time)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < 5.0, what
        await asyncio.sleep(0.01)


async def test_one_holder_in_eight_terminals_still_goes_first(tmp_path: Path) -> None:
    """At most one terminal in FIRST_SHARE holding messages (here exactly one in 8, the last in
    the table): its re-delivery leaves in the grant's first slice (4 terminals), not when the
    pass reaches it in the second."""
    cp, a, b, names, _ = flip_pair(tmp_path, 8, False, ATTRS)
    holder = names[-1]
    cp.terminal_msg(cp.terms[holder], 1, b"x")
    switch(cp, a, b, planned=False)
    assert cp.flipping is not None, "the first slice only"
    assert _batched(b) == [(holder, 1)], "the holder was not taken first"
    await flipped(cp)


async def test_a_notice_still_owed_from_the_grant_before_goes_ahead_of_the_next(tmp_path: Path) -> None:
    """Two planned switchovers in a row (A to B, then B back to A) before the first grant's
    notices went out: each terminal gets both `switched` notices, the first grant's first; the
    second flip must send the one still owed before it sets its own."""
    cp, a, b, t, names = _pair_recording(tmp_path)
    e0 = cp.epoch
    switch(cp, a, b, planned=True)
    cp.settle_flip()
    assert cp.active is b and cp.terms[names[0]].notice is not None
    switch(cp, b, a, planned=True)
    cp.settle_flip()
    assert cp.active is a
    await _until(lambda: cp.terms[names[0]].notice is None, "the notices never went out")
    t.flush()
    got = [(f["t"], f.get("epoch")) for f in t.transport.frames() if f["t"] in ("switched", "session")]
    assert got == [("session", e0), ("switched", e0 + 1), ("switched", e0 + 2)], got


async def test_the_first_reply_to_a_redelivered_message_is_timed_in_the_switch_record(tmp_path: Path) -> None:
    """A message delivered to the lost active goes to the new one marked redelivered; its reply
    is the switch record's `first_redelivered_reply_ms` (the flip marks the held message itself,
    not only the frame it sends), and, the one terminal in flight at the grant served, the
    record's `all_served_ms` (the flip counted that terminal's messages in flight)."""
    cp, a, b, names, _ = flip_pair(tmp_path, 2, False, ATTRS)
    cp.terminal_msg(cp.terms[names[0]], 1, b"x")
    switch(cp, a, b, planned=False)
    await flipped(cp)
    b.flush()
    items = [it for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert [(it[0], it[1], it[3]) for it in items] == [(names[0], 1, True)], items
    cp.host_reply(b, names[0], 1, "r")
    rec = cp.switchovers[-1]
    assert rec["first_reply_ms"] is not None and rec["first_redelivered_reply_ms"] is not None, rec
    assert rec["in_flight_terminals"] == 1 and rec["in_flight_messages"] == 1, rec
    assert rec["all_served_ms"] is not None, "the terminal in flight at the grant was not counted served"


async def test_after_a_flip_the_next_message_goes_to_the_new_active_early(tmp_path: Path) -> None:
    """The flip's re-delivery moves the terminal's delivery mark to the new epoch: the next
    message, its record not yet durable, goes to the new active at once (early delivery follows
    a message re-delivered by the flip), not only once durable."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 30\n")
    cp.journal.durable = True  # (the memory-only journal behind HeldJournal: as if it wrote)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", record=True)
    b.marks_repeats = b.adopts = True
    cp.host_register(b, "standby", 1)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", ATTRS)
    cp.host_open(b, "T00001", "standby", ATTRS)
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    switch(cp, a, b, planned=False)
    await flipped(cp)
    assert _delivered(b) == [(1, True)]
    j = HeldJournal(cp, ("a",))
    t.data_received(encode({"t": "msg", "id": 2, "data": "y"}))
    assert _delivered(b) == [(1, True), (2, False)], "not delivered early"
    j.release()


async def test_an_undone_switchovers_flip_settled_into_a_lost_active_marks_nothing_delivered(tmp_path: Path) -> None:
    """A planned switchover undone (its grantee lost before its grant was durable): the old
    active gets the role back and its flip is to hand it what was held while it was releasing.
    The old active's link drops before the flip reaches that terminal: host_lost finishes the
    flip against a closed link, so the message went to no host, and the next active gets it
    unmarked."""
    cp, a, b, names, _ = flip_pair(tmp_path, 64, True, ATTRS)
    holder = cp.terms[names[-1]]  # last in the table: not reached by the first slice
    cp.host_release(a)  # releasing: what comes now waits for the grant
    cp.terminal_msg(holder, 1, b"x")
    await asyncio.sleep(0)
    assert holder.held[1].delivered_epoch == 0
    held = HeldJournal(cp)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record
    b.connection_lost(None)  # lost before it is durable: host-a gets the role back
    held.release()
    assert cp.active is a and cp.flipping is not None, "the flip should still be going"
    a.connection_lost(None)  # and host-a is lost before the flip reaches the holder
    assert cp.flipping is None
    assert holder.held[1].delivered_epoch == 0, "marked delivered to a host whose link was gone"
    a.last_rx -= cp.host_lease + 1  # (later: the lease host-a may have held ran out, and the role is free)
    c = fake_host(cp, "host-c", "active", record=True)
    held.release()  # (its epoch's record: the journal still holds "e" records back)
    cp.host_open(c, holder.name, "active", ATTRS)
    assert _delivered(c) == [(1, False)]


async def test_a_terminal_flipped_ahead_leaves_the_pass_where_it_was(tmp_path: Path) -> None:
    """A frame about one terminal the pass has not reached flips it alone (`Flip.one`): the
    pass's place in the table stays where it was (not moved back to re-walk what it did), and
    the pass ends in the slices it would have taken anyway."""
    cp, a, b, names, _ = flip_pair(tmp_path, 64, False, ATTRS)
    switch(cp, a, b, planned=False)
    f = cp.flipping
    assert f is not None and f.i == 4
    cp.settle_flip_for(cp.terms[names[-1]])
    assert f.ahead == 1 and f.i == 4, f.i
    await flipped(cp)
    assert cp.switchovers[-1]["slices"] == 16 and cp.switchovers[-1]["ahead"] == 1, cp.switchovers[-1]


async def test_a_session_adopted_for_a_terminal_not_back_goes_with_the_lost_active(tmp_path: Path) -> None:
    """The active adopted T00001's session (its terminal not back yet) and was lost: the grant's
    flip drops that session (it went with the old active), and the totals agree."""
    cp, a = adopting_active(tmp_path)
    b = fake_host(cp, "host-b", "standby")
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert cp.terms["T00001"].active is not None and cp.terms["T00001"].conn is None
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    assert cp.active is b and cp.terms["T00001"].active is None
    agree_counts(cp)


async def test_a_planned_flips_record_counts_the_sessions_kept_as_standby_ones(tmp_path: Path) -> None:
    """A planned switchover in slices: the switch record's `standby_kept` counts every session
    of the demoted active kept as its standby session, over all the slices."""
    cp, a, b, names, _ = flip_pair(tmp_path, 10, True, ATTRS)
    switch(cp, a, b, planned=True)
    await flipped(cp)
    rec = cp.switchovers[-1]
    assert rec["slices"] > 1 and rec["standby_kept"] == 10 and rec["switched"] == 10, rec


async def test_a_batched_redelivery_counts_each_message_once(tmp_path: Path) -> None:
    """Two messages held while no host was active (one first delivered, unmarked) and one
    delivered to the lost active (marked): handed over in a `deliver_batch` of items and flags,
    they count once each, in `delivered` and `redelivered`."""
    cp, a, b, names, _ = flip_pair(tmp_path, 2, False, ATTRS)
    cp.terminal_msg(cp.terms[names[0]], 1, b"x")  # delivered to host-a
    a.connection_lost(None)
    cp.terminal_msg(cp.terms[names[1]], 1, b"y")  # held: no active
    before = dict(cp.counters)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    assert sorted(_batched(b)) == [(names[0], 1), (names[1], 1)]
    assert cp.counters["delivered"] - before.get("delivered", 0) == 1
    assert cp.counters["redelivered"] - before.get("redelivered", 0) == 1


async def test_a_flip_settled_early_does_not_end_twice(tmp_path: Path) -> None:
    """A flip completed at once (`settle_flip`) before its next slice ran: the slice scheduled is
    cancelled, so the switch is recorded once (one record, one failover counted), however many
    turns of the loop follow."""
    cp, a, b, names, _ = flip_pair(tmp_path, 64, False, ATTRS)
    n = len(cp.switchovers)
    switch(cp, a, b, planned=False)
    assert cp.flipping is not None
    cp.settle_flip()
    assert cp.flipping is None and len(cp.switchovers) == n + 1
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(cp.switchovers) == n + 1 and cp.counters["failovers"] == 1, cp.switchovers


async def test_an_answer_not_yet_sent_to_a_terminal_that_does_not_resume_is_in_flight_at_the_grant(tmp_path: Path) -> None:
    """T01 does not resume; the active answered its message and the reply waits for its
    discard record ("d") to be durable when the active is lost. That message counts as in flight
    at the grant (the switch kept its terminal waiting), in the switch record."""
    cp, a, b, t, names = _pair_recording(tmp_path, None)
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    j = HeldJournal(cp, ("d",))
    cp.host_reply(a, names[0], 1, "r")
    held = cp.terms[names[0]].held[1]
    assert held.replying and j.held
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    rec = cp.switchovers[-1]
    assert rec["in_flight_messages"] == 1 and rec["in_flight_terminals"] == 1, rec
    j.release()


async def test_a_terminal_closed_by_the_classic_path_counts_its_messages_in_flight(tmp_path: Path) -> None:
    """Without standby sessions the grant closes a terminal's connection (the classic path); a
    message it had waiting at the grant counts in the switch record's in-flight totals."""
    cp = cp_core(tmp_path, 2, standby_capable=False)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    fake_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", ATTRS)
    a.connection_lost(None)
    cp.terminal_msg(cp.terms["T00001"], 1, b"x")
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    rec = cp.switchovers[-1]
    assert rec["classic"] == 1 and rec["in_flight_terminals"] == 1 and rec["in_flight_messages"] == 1, rec


# -- the adoption (hsb/cp/adopt.py) ---------------------------------------------------------------


async def test_a_session_named_twice_in_an_adoption_is_adopted_once(tmp_path: Path) -> None:
    """The active names T00001's session twice (its terminal back, waiting): the first stands;
    the terminal is told its session is open once, and the adoption counts one session."""
    cp, a = adopting_active(tmp_path)
    t = recording_terminal(cp, "T00001")
    cp.host_adopt(a, [("T00001", {"n": 1}), ("T00001", {"n": 2})], last=True)
    s = cp.terms["T00001"].active
    assert s is not None and s.host is a and s.attrs == {"n": 1}
    t.flush()
    assert [f["state"] for f in t.transport.frames() if f["t"] == "session"] == ["open"]
    assert cp.counters["adopted"] == 1


async def test_adopt_frames_of_a_host_demoted_for_good_are_not_kept_for_a_role_back(tmp_path: Path) -> None:
    """host-a's adoption is cut by a planned grant to host-b, which stands: host-a is the standby
    now. An `adopt` frame it sends then is nobody's, not kept aside as one sent while the grant
    was pending: given the role back later, host-a does not adopt that session."""
    cp, a = adopting_active(tmp_path)
    cp.host_adopt(a, [("T00001", {})], last=False)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    await _until(lambda: cp.active is b and cp.announced and cp.flipping is None, "the grant to host-b")
    assert a.role != "demoting" and not a.closed
    cp.host_adopt(a, [("T00002", {})], last=True)
    assert not a.adopt_gap and cp.terms["T00002"].active is None
    cp.host_release(b)
    cp.host_handover(b, wait=False)
    await _until(lambda: cp.active is a and cp.announced and cp.flipping is None, "the role back to host-a")
    assert cp.terms["T00002"].active is None, "a session named by a standby adopted"


@pytest.mark.parametrize("point", ["cp.mid_switch", "cp.mid_redelivery"])
async def test_a_flip_with_a_crash_point_armed_but_not_firing_hands_each_message_over_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """With a crash point of the flip armed (HSB_CRASH_POINTS, its visits skipped so that it
    never fires), the pass sends what it collected at each visit: every held message goes to the
    new active once, not again with the next terminal's."""
    from hsb import faults

    monkeypatch.setattr(faults, "_points", frozenset({point}))
    monkeypatch.setattr(faults, "_skip", 10**9)
    cp, a, b, names, _ = flip_pair(tmp_path, 3, False, ATTRS)
    for name in names:
        cp.terminal_msg(cp.terms[name], 1, name.encode())
    switch(cp, a, b, planned=False)
    await flipped(cp)
    assert sorted(_batched(b)) == [(n, 1) for n in names]


async def test_a_session_adopted_for_a_terminal_that_came_back_does_not_expire(tmp_path: Path) -> None:
    """The active names T00001's session before its terminal is back; the terminal comes back
    within `resume_window`: the expiry at the end of the window leaves that session open (it
    closes only those whose terminal stayed away)."""
    cp, a = adopting_active(tmp_path)
    cp.host_adopt(a, [("T00001", {}), ("T00002", {})], last=True)
    recording_terminal(cp, "T00001")
    cp._adopted_expire(a, ["T00001", "T00002"])  # the window's end (called, not waited for)
    assert cp.terms["T00001"].active is not None and cp.terms["T00002"].active is None
    a.flush()
    assert [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"] == ["T00002"]
    assert cp.counters["adopted_expired"] == 1


async def test_sessions_named_after_an_adoption_was_cut_expire_a_window_after_their_own_frame(tmp_path: Path) -> None:
    """An adoption cut by a grant schedules the expiry of what it adopted so far (T00001); what
    the host names after the cut (T00002, the role given back) expires `resume_window` after
    its own frame, in a list of its own, not with the earlier list, a window after the cut."""
    cp, a = adopting_active(tmp_path)
    loop = asyncio.get_running_loop()
    scheduled: list[list[str]] = []
    real = loop.call_later

    def call_later(delay: float, fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "_adopted_expire":
            scheduled.append(args[1])
        return real(delay, fn, *args)

    loop.call_later = call_later  # type: ignore[method-assign,assignment]
    try:
        cp.host_adopt(a, [("T00001", {})], last=False)
        cp._adoption_cut(a)  # (what a grant does to it)
        assert scheduled == [["T00001"]]
        cp._adopt(a, [("T00002", {})], deliver=False)  # named after the cut
        cp._adoption_done(a)
    finally:
        del loop.call_later
    assert scheduled == [["T00001"], ["T00002"]], scheduled


async def test_a_session_named_for_a_terminal_whose_connection_is_closing_waits_for_it(tmp_path: Path) -> None:
    """T00001's connection is closed here, not yet gone, when the active names its session:
    the terminal is not back, so that session waits for it like any other and is closed at the
    active when the window ends with the terminal away."""
    cp, a = adopting_active(tmp_path)
    t = recording_terminal(cp, "T00001")
    t.close()
    assert cp.terms["T00001"].conn is t and t.closed
    cp.host_adopt(a, [("T00001", {})], last=False)
    names = list(a.adopt_waiting)
    assert names == ["T00001"]
    t.connection_lost(None)
    cp._adopted_expire(a, names)  # the window's end (called, not waited for)
    a.flush()
    assert [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"] == ["T00001"]


# -- the takeover (hsb/cp/taking_over.py) ---------------------------------------------------------


def _server(tmp_path: Path) -> Any:
    """A CPServer on a journal in `tmp_path` (not started: `take_over` is called alone)."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from tests.support.procs import SECRET, cp_config

    cfg = load(cp_config(tmp_path, terminals=2, journal=str(tmp_path / "j")), CPConfig)
    return srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))


async def test_a_second_takeover_of_a_journal_follows_a_cp_and_repins_what_it_recovered(tmp_path: Path) -> None:
    """A CP takes a new journal over (generation 1: it follows no CP) and accepts a message; a
    second takes the same journal over (generation 2, from 1): it follows a CP, recovers the
    message into its snapshot's segment (every live record sits there now), tickles are on,
    a newer CP stops it (`on_superseded`), no file step is left under way, and the segments of
    the generation before are deleted once the snapshot is durable."""
    from hsb.cp.journal.recovery import segment_files

    s1 = _server(tmp_path)
    await s1.take_over("first")
    try:
        assert s1.took_over["generation"] == 1 and s1.took_over["took_over"]["from_generation"] == 0
        assert not s1.cp.follows_a_cp
        name = sorted(s1.cp.terms)[0]
        s1.cp.terminal_msg(s1.cp.terms[name], 1, b"x")
        assert await s1.cp.journal.drain()
    finally:
        s1._end_takeover_beats()
        s1.cp.journal.close()
    s2 = _server(tmp_path)
    await s2.take_over("second")
    try:
        cp = s2.cp
        assert s2.took_over["generation"] == 2 and s2.took_over["took_over"]["from_generation"] == 1
        assert cp.follows_a_cp and cp.tickles is not None
        assert cp.journal.on_superseded == s2._superseded and s2.takeover_step is None
        held = cp.terms[name].held[1]
        assert held.data == b"x" and held.seg == cp.journal.first_seg, (held.seg, cp.journal.first_seg)
        # the snapshot durable, the segments of the generation taken over are gone
        assert {g for g, _, _ in segment_files(tmp_path / "j")} == {2}, segment_files(tmp_path / "j")
    finally:
        s2._end_takeover_beats()
        cp.journal.close()
    s3 = _server(tmp_path)  # and again: the snapshot the second wrote, in a segment of its own, holds it
    await s3.take_over("third")
    try:
        assert s3.took_over["generation"] == 3 and s3.cp.terms[name].held[1].data == b"x"
    finally:
        s3._end_takeover_beats()
        s3.cp.journal.close()


async def test_a_failed_takeover_stops_its_generations_beat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recovery raises (a damaged journal, say): the takeover fails, and the heartbeat of the
    generation it took stops with it (a CP that does not serve must not look alive)."""
    from hsb.cp import taking_over

    def damaged(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("damaged")

    monkeypatch.setattr(taking_over, "recover", damaged)
    s = _server(tmp_path)
    with pytest.raises(RuntimeError):
        await s.take_over("test")
    assert s.cp is None and s._takeover_beats is None


async def test_a_takeover_drops_a_torn_tail_without_cutting_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal taken over ends in a torn record (its CP died writing it, or, superseded, is
    still writing it): the recovery drops it but leaves the file as it is until the snapshot is
    durable and the file deleted (docs/cp-journal.md)."""
    from hsb.cp import taking_over
    from hsb.cp.journal.recovery import segment_files

    s1 = _server(tmp_path)
    await s1.take_over("first")
    s1._end_takeover_beats()
    s1.cp.journal.close()
    last = segment_files(tmp_path / "j")[-1][2]
    with open(last, "ab") as f:
        f.write(b"\\x00\\x00\\x01\\x00torn")
    size = last.stat().st_size
    seen: list[int] = []

    class Watched(taking_over.Journal):  # type: ignore[misc,name-defined]
        def open(self, *a: Any, **kw: Any) -> int:
            seen.append(last.stat().st_size)  # after the recovery, before the snapshot
            return int(super().open(*a, **kw))

    monkeypatch.setattr(taking_over, "Journal", Watched)
    s2 = _server(tmp_path)
    await s2.take_over("second")
    s2._end_takeover_beats()
    s2.cp.journal.close()
    assert seen == [size]


async def test_a_terminal_told_its_session_after_an_undone_switchover_is_not_told_again_at_the_next(tmp_path: Path) -> None:
    """T00001 comes back while host-a is given the role back (a planned switchover undone): its
    session, kept, is told open by that grant's flip. A second planned switchover undone the same
    way leaves its session where it was: it is not told again (the first told it)."""
    cp, a = adopting_active(tmp_path, record=False)
    cp.host_adopt(a, [("T00001", {})], last=True)
    t1 = None
    for round_ in range(2):
        b = fake_host(cp, f"host-b{round_}", "standby")
        cp.host_open(b, "T00001", "standby", {})
        cp.host_release(a)
        held = HeldJournal(cp)
        cp.host_handover(a, wait=False)  # the grant to host-b waits on its record
        b.connection_lost(None)
        held.release_one()  # durable, its grantee gone: undone, host-a granted the role back
        if t1 is None:
            t1 = recording_terminal(cp, "T00001", 0)
        held.release()
        await _until(lambda: cp.announced and cp.flipping is None and cp.terms["T00001"].notice is None, "the role back")
        assert cp.switchovers[-1]["kind"] == "undone"
    assert t1 is not None
    t1.flush()
    assert [f["state"] for f in t1.transport.frames() if f["t"] == "session"] == ["open"]
