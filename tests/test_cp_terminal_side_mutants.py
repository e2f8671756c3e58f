"""The CP's terminal side (hsb/cp/terminal_side.py; docs/protocol.md §1, docs/cp-journal.md),
each test naming a behaviour that a mutation audit of the module (with hsb/cp/logons.py and
hsb/cp/waiting.py) found no test for: a resent reply counts as written to the new connection for
a confirm's `seen`; a repeat of an acknowledged id on the same connection is acknowledged again;
an owed switch notice goes before the next frame; a terminal back to a session the active
adopted gets what it sent before; early delivery only to an adopting active, never from a
superseded journal, never ahead of a message the lost active had early; a message answered
with its discard on the way is not handed to the next active; a logoff's message made durable
after a new run logged on still goes; a standby session of a terminal that said bye closes as
a logoff at the grant; a bye with only kept replies writes its "o" record; and held_bytes
reached exactly stops the reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.cp.config import CPSection
from hsb.wire.framing import encode
from tests.support.cpcore import HeldJournal, cp_core, fake_host, flipped, journal_kinds, recording_terminal, switch
from tests.test_cp_replies_mutants import _logged_on

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def replies(p: Any) -> list[tuple[int, Any, bool]]:
    """(id, data, resent) of every `reply` the CP wrote to the stand-in terminal `p`."""
    return [(m["id"], m["data"], bool(m.get("resent"))) for m in frames(p) if m.get("t") == "reply"]


def delivered(h: Any) -> list[tuple[int, Any]]:
    """(id, data) of every message the CP handed to the stand-in host `h`."""
    out: list[tuple[int, Any]] = []
    for f in frames(h):
        if f["t"] == "deliver":
            out.append((f["id"], f["data"]))
        elif f["t"] == "deliver_batch":
            out += [(it[1], it[2]) for it in f["items"]]
    return out


async def test_a_confirm_that_had_not_read_a_resent_reply_does_not_forget_it(tmp_path: Path) -> None:
    """A resuming terminal gets reply 1 and its connection drops before it read it; its hello
    (last_reply 0) gets reply 1 again, marked, on the new connection. A confirm of id 1 written
    when the terminal had read no reply frame on this connection (`seen` 0: reply 1 crossed it on
    the wire) forgets nothing: the connection drops again, and the next hello gets reply 1 once more."""
    cp, h, p = _logged_on(tmp_path, 0)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    cp.host_reply(h, "T00001", 1, "r1")
    assert replies(p) == [(1, "r1", False)]
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0)
    assert replies(p) == [(1, "r1", True)]
    p.data_received(encode({"t": "confirm", "id": 1, "seen": 0}))
    assert 1 in cp.terms["T00001"].replies, "forgotten by a confirm written before the resent reply was read"
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0)
    assert replies(p) == [(1, "r1", True)]


async def test_a_terminal_back_to_a_session_adopted_for_it_gets_its_held_message_delivered(tmp_path: Path) -> None:
    """A restarted CP: T00001 comes back before any host, sends message 1 (held: no active yet)
    and its connection drops. The active registers and adopts T00001's session, the terminal not
    connected. When the terminal logs on again its session is open at once, and message 1 goes to
    the active then: nothing else would hand it over (the session is there, no request follows)."""
    cp = cp_core(tmp_path, 3, cp="resume_window = 30\n")
    p = recording_terminal(cp, "T00001", 0)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert [f["id"] for f in frames(p) if f["t"] == "ack"] == [1]
    p.connection_lost(None)
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert delivered(a) == []
    p = recording_terminal(cp, "T00001", 0)
    assert [f["state"] for f in frames(p) if f["t"] == "session"] == ["open"]
    assert delivered(a) == [(1, "m1")]


async def test_a_repeat_of_an_acknowledged_id_on_the_same_connection_is_acknowledged_again(tmp_path: Path) -> None:
    """A terminal sends message 1, acknowledged, then 1 again on the same connection with other
    data (SPEC §6.2: a repeat of an acknowledged id is acknowledged again whatever it says, and
    not delivered twice): a second ack, the connection stays, and the active had message 1 once."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    p.data_received(encode({"t": "msg", "id": 1, "data": "y"}))
    assert not p.closed, frames(p)
    assert [f["id"] for f in frames(p) if f["t"] == "ack"] == [1, 1]
    assert delivered(h) == [(1, "x")]


def _with_standby_session(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """host-a active, host-b standby (recording), T00001 resuming with its session at each:
    (cp, host-a, host-b, T00001's connection)."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    return cp, a, b, p


async def test_a_switch_notice_owed_goes_before_the_next_frame_to_the_terminal(tmp_path: Path) -> None:
    """The active lost and the standby granted: the terminal is owed `switched` (paced, after the
    new active's first reply). The first frame the CP writes to it meanwhile, the ack of its next
    message, goes after that notice, never before it (SPEC §5.4)."""
    cp, a, b, p = _with_standby_session(tmp_path)
    switch(cp, a, b, planned=False)
    await flipped(cp)
    assert [f["t"] for f in frames(p) if f["t"] in ("switched", "ack")] == []
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert [f["t"] for f in frames(p) if f["t"] in ("switched", "ack")] == ["switched", "ack"], frames(p)


@pytest.mark.parametrize("planned", [False, True])
async def test_a_message_answered_whose_discard_is_on_its_way_is_not_handed_to_the_next_active(tmp_path: Path, planned: bool) -> None:
    """A terminal that does not resume: the active answers message 1, and its reply waits for the
    discard ("d") to be durable. The role moves to the standby meanwhile: message 1 is answered,
    it is not handed to the new active to be processed again."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    j = HeldJournal(cp, ("d",))
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    cp.host_reply(a, "T00001", 1, "r1")
    assert j.held and replies(p) == []
    switch(cp, a, b, planned)
    await flipped(cp)
    cp.host_open(b, "T00001", "active", {})
    assert delivered(b) == []
    j.release()
    assert replies(p) == [(1, "r1", False)]
    assert delivered(b) == []


def _durable(tmp_path: Path, *, adopts: bool = True) -> tuple[Any, Any, Any, Any]:
    """host-a active, marking repeats (and adopting, or not), T00001's session open at it; the
    journal's "a" records durable only when the test says so (`j.release()`)."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 30\n")
    cp.journal.durable = True  # (the memory-only journal behind HeldJournal: as if it wrote)
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = True
    a.adopts = adopts
    cp.host_register(a, "active", 1)
    if adopts:
        cp.host_adopt(a, [], last=True)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    return cp, a, t, HeldJournal(cp, ("a",))


@pytest.mark.parametrize("adopts", [False, True])
async def test_a_message_goes_early_only_to_an_active_that_adopts(tmp_path: Path, adopts: bool) -> None:
    """Early delivery (before the record is durable) needs an active that adopts: without
    adoption a restarted CP cannot learn what that active had, and a message it had early could
    come back unmarked. To one that does not adopt, message 1 goes once durable; to one that
    does, at once."""
    cp, a, t, j = _durable(tmp_path, adopts=adopts)
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert delivered(a) == ([(1, "m1")] if adopts else [])
    j.release()
    assert delivered(a) == [(1, "m1")]


async def test_a_superseded_journal_hands_nothing_over_early(tmp_path: Path) -> None:
    """Another CP has taken the journal over (this one superseded): a message read now is not
    handed to the active ahead of a record that will never be durable here."""
    cp, a, t, j = _durable(tmp_path)
    cp.journal.superseded = 2
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert delivered(a) == []


async def test_a_message_read_after_a_failover_does_not_overtake_one_handed_early_to_the_lost_active(tmp_path: Path) -> None:
    """Message 1 went early to the active (its record not durable yet), and the active is lost:
    the standby granted the role has not had it (it goes once durable). Message 2, read now, is
    not handed early to the new active ahead of 1: the new active gets 1, then 2."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 30\n")
    cp.journal.durable = True
    a = fake_host(cp, "host-a", record=True)
    b = fake_host(cp, "host-b", record=True)
    for h, role in ((a, "active"), (b, "standby")):
        h.marks_repeats = h.adopts = True
        cp.host_register(h, role, 1)
    cp.host_adopt(a, [], last=True)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    j = HeldJournal(cp, ("a",))
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert delivered(a) == [(1, "m1")]
    switch(cp, a, b, planned=False)
    await flipped(cp)
    t.data_received(encode({"t": "msg", "id": 2, "data": "m2"}))
    j.release()
    assert [mid for mid, _ in delivered(b)] == [1, 2], delivered(b)


async def test_a_logoffs_message_made_durable_after_a_new_run_logged_on_goes_to_the_active(tmp_path: Path) -> None:
    """Message 1, then bye, and the connection gone before 1's record is durable; the terminal
    logs on again as a new run (no session yet). When 1's record is durable it goes to the
    active without a session, as a logoff's message, not left held for the new run's session."""
    cp = cp_core(tmp_path, 2)
    cp.journal.durable = True
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    j = HeldJournal(cp, ("a",))
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    t.data_received(encode({"t": "bye"}))
    t.connection_lost(None)
    recording_terminal(cp, "T00001", 0)
    assert delivered(a) == []
    j.release()
    assert delivered(a) == [(1, "m1")]


async def test_a_standby_session_of_a_terminal_that_said_bye_is_closed_as_a_logoff_at_the_grant(tmp_path: Path) -> None:
    """T00001 says bye with message 1 unanswered (its connection stays for the answer), and the
    active is lost before it answers: the standby granted the role closes T00001's session there
    as `logoff`, not `disconnect`, and does not switch it over."""
    cp, a, b, p = _with_standby_session(tmp_path)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    p.data_received(encode({"t": "bye"}))
    assert not p.closed
    switch(cp, a, b, planned=False)
    await flipped(cp)
    closed = [f["reason"] for f in frames(b) if f["t"] == "session_closed" and f["terminal"] == "T00001"]
    assert closed == ["logoff"], frames(b)
    assert [f for f in frames(p) if f["t"] == "switched"] == []


async def test_a_bye_with_only_kept_replies_writes_its_logoff_record(tmp_path: Path) -> None:
    """A resuming terminal holds reply 1 unconfirmed (kept) and nothing unanswered when it says
    bye: its logoff is still recorded ("o"), so that a CP restarted on the journal keeps that
    reply for nobody, not for the terminal's next run."""
    cp, h, p = _logged_on(tmp_path, 0)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    cp.host_reply(h, "T00001", 1, "r1")
    assert 1 in cp.terms["T00001"].replies and not cp.terms["T00001"].held
    kinds = journal_kinds(cp)
    p.data_received(encode({"t": "bye"}))
    assert kinds[:1] == ["o"], kinds


@pytest.mark.parametrize("extra", [0, 1])
async def test_a_terminal_whose_held_data_reaches_held_bytes_exactly_is_not_read(tmp_path: Path, extra: int) -> None:
    """held_bytes is reached, not only passed: a message that brings the terminal's held data to
    exactly held_bytes (or past it) stops its reading until the active answers."""
    size = CPSection.model_fields["held_bytes"].metadata[0].ge
    cp = cp_core(tmp_path, 2, cp=f"held_bytes = {size}\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": "x" * (size + extra)}))
    assert p.reading_paused
    cp.host_reply(h, "T00001", 1, "r1")
    assert not p.reading_paused
