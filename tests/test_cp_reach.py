"""Three paths of the CP that earlier reviews took for possibly unreachable, each pinned by the
scenario that reaches it (in-process, tests/support/cpcore):

- a planned switchover undone (hsb.cp.arbitration `_grantee_lost`): host-a releases and hands
  over, host-b's link drops before the grant's epoch is durable; once it is, host-a is granted
  the role back at a new epoch, and the flip that follows tells the terminals whose session
  stayed at host-a nothing; the `switched` kind of that flip is "switchover", the only one a
  terminal knows of (docs/protocol.md §1), for the one terminal it could ever reach: a standby
  session host-a opened while granted the role back, which no hsbd does;
- the settling of a terminal that confirms nothing in `_replied` (hsb.cp.replies): reached by a
  terminal that does not resume, a reply kept for it while away, and the reply to a message of
  a run of its that logged off; every reply kept for such a terminal was never sent, so it
  settles none of them, and the kept one goes at the next logon, once;
- a planned switchover's wait for standby sessions (`_handover` and its timer, hsb.cp.host_sessions)
  when a failover grants the role meanwhile: the grant ends the wait and cancels its timer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import HeldJournal, cp_core, fake_host, flipped, recording_terminal

pytestmark = pytest.mark.timeout(30)


def _frames(conn: Any, t: str | None = None) -> list[dict[str, Any]]:
    """What the CP wrote to a recording stand-in (of type `t`, if given)."""
    conn.flush()
    return [m for m in conn.transport.frames() if t is None or m.get("t") == t]


def _undone_pair(tmp_path: Path) -> tuple[Any, Any, Any, Any, HeldJournal]:
    """host-a active (T00001 and T00002 connected, sessions at host-a and standby ones at host-b),
    released and handing over: the grant to host-b waits for its epoch's record, and host-b's
    link drops meanwhile. (cp, host-a, host-b, T00001's connection, the held journal)."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    p = recording_terminal(cp, "T00001")
    recording_terminal(cp, "T00002")
    for name in ("T00001", "T00002"):
        cp.host_open(a, name, "active", {})
        cp.host_open(b, name, "standby", {})
    cp.host_release(a)
    held = HeldJournal(cp)
    cp.host_handover(a, wait=False)  # granted to host-b: announced once its epoch is durable
    assert cp.granting is b and cp.demoting is a and cp.epoch == 2
    b.connection_lost(None)  # lost before that
    return cp, a, b, p, held


async def _notices_sent(cp: Any) -> None:
    """Until the last switch's owed notices have gone (hsb.cp.notices: after the grant, later)."""
    deadline = time.monotonic() + 5.0
    while "notices_sent_ms" not in cp.switchovers[-1]:
        assert time.monotonic() < deadline, "the switch's notices never went"
        await asyncio.sleep(0.01)


async def test_a_planned_switchover_whose_grantee_is_lost_first_gives_the_role_back_and_tells_the_terminals_nothing(tmp_path: Path) -> None:
    cp, a, b, p, held = _undone_pair(tmp_path)
    before = len(_frames(p))
    assert held.release_one() == 1  # epoch 2 durable, its grantee gone: undone, epoch 3 for host-a
    assert cp.granting is a and cp.epoch == 3 and cp.recorded_active == "host-a"
    held.release()
    await flipped(cp)
    await _notices_sent(cp)
    assert cp.active is a and a.role == "active" and cp.standby is None
    assert [(m["epoch"], "req" in m) for m in _frames(a, "switch_granted")] == [(3, False)]
    assert not _frames(a, "demoted") and not _frames(a, "fenced")
    assert _frames(p)[before:] == [], "its session stayed at host-a: nothing to tell it"
    assert all(t.active is not None and t.active.host is a and t.standby is None for t in cp.terms.values())
    rec = cp.switchovers[-1]
    assert (rec["kind"], rec["from"], rec["to"], rec["epoch"], rec["switched"], rec["classic"]) == ("undone", "host-b", "host-a", 3, 0, 0)
    # ("from": the holder of the epoch before, the grantee that was lost)
    assert rec["reason"] == "host-b was lost before the planned switchover took effect" and rec["why"] == "granted host lost"
    assert (cp.counters["switchovers_undone"], cp.counters["switchovers"], cp.counters["failovers"]) == (1, 0, 0)
    assert [e["kind"] for e in cp.history.entries] == ["undone"]


async def test_the_undone_flips_switched_notice_says_switchover(tmp_path: Path) -> None:
    """The one terminal the undone grant's flip can tell `switched`: a standby session host-a
    opened while its role-back epoch was made durable (the CP takes standby opens from the host
    being granted; no hsbd opens one while it hands over). Its kind is one a terminal knows."""
    cp, a, b, p, held = _undone_pair(tmp_path)
    held.release_one()
    assert cp.granting is a
    cp.host_open(a, "T00001", "standby", {})
    before = len(_frames(p))
    held.release()
    await flipped(cp)
    await _notices_sent(cp)
    assert [(m["epoch"], m["kind"]) for m in _frames(p, "switched")[-1:]] == [(3, "switchover")]
    assert len(_frames(p)) == before + 1 and cp.switchovers[-1]["kind"] == "undone"


async def test_a_reply_for_nobody_settling_leaves_a_non_resuming_terminals_kept_reply_for_its_logon(tmp_path: Path) -> None:
    """T00001 does not resume. Its first run sends 1 and 2, logs off and goes. Its next run
    sends 3 and goes; the reply to 3 is kept for it ("r", never sent). The reply to 1, nobody's
    (its run logged off), is settled by its discard ("d"): `_replied` then settles what a
    terminal that confirms nothing holds, which is nothing here (reply 3 never went out). At
    its next logon reply 3 goes, once, marked; reply 1 never goes."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    term = cp.terms["T00001"]
    p1 = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    p1.data_received(encode({"t": "msg", "id": 1, "data": "m1"}) + encode({"t": "msg", "id": 2, "data": "m2"}) + encode({"t": "bye"}))
    p1.connection_lost(None)
    assert term.logoff_upto == 2 and sorted(term.held) == [1, 2]
    p2 = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    p2.data_received(encode({"t": "msg", "id": 3, "data": "m3"}))
    assert term.durable_acked == 3
    p2.connection_lost(None)
    cp.host_reply(h, "T00001", 3, "r3")  # away: kept for its next logon
    assert [(k.id, k.sent) for k in term.replies.values()] == [(3, False)]
    nobody = cp.counters["replies_after_logoff"]
    cp.host_reply(h, "T00001", 1, "r1")  # nobody's: its discard, then `_replied`
    assert cp.counters["replies_after_logoff"] == nobody + 1 and 1 not in term.held
    assert [(k.id, k.sent) for k in term.replies.values()] == [(3, False)], "a reply never sent was settled"
    p3 = recording_terminal(cp, "T00001", None)
    deadline = time.monotonic() + 5.0
    while not _frames(p3, "reply"):
        assert time.monotonic() < deadline, "the kept reply never went"
        await asyncio.sleep(0)
    assert [(m["id"], m["data"], m.get("resent")) for m in _frames(p3, "reply")] == [(3, "r3", True)]
    assert not term.replies and not [m for m in _frames(p1) + _frames(p2) if m.get("t") == "reply"]


async def test_a_failover_granted_during_a_handover_wait_ends_the_wait_and_its_timer(tmp_path: Path) -> None:
    """host-a released and handed over; the handover waits for T00002's standby session. host-a
    then goes silent past host_timeout and host-b asks for a failover: granted, host-a fenced.
    The wait ends with the grant: its timer is cancelled (firing, it would answer host-a's
    handover of before with a refusal), and no wait is left naming the hosts of before."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    for name in ("T00001", "T00002"):
        recording_terminal(cp, name)
        cp.host_open(a, name, "active", {})
    cp.host_open(b, "T00001", "standby", {})
    cp.host_release(a)
    cp.host_handover(a)
    h = cp._handover
    assert h is not None and h.owed == {"T00002"} and not h.timer.cancelled()
    a.last_rx = time.monotonic() - cp.host_timeout - 1.0  # silent past host_timeout
    cp.host_switchover(b, "active silent", False, "failover", peer_closed=True)
    await flipped(cp)
    assert cp.active is b and a.fenced and cp.switchovers[-1]["kind"] == "failover"
    assert cp._handover is None and h.timer.cancelled()
    assert not _frames(a, "handover_refused") and not _frames(b, "switch_refused")
