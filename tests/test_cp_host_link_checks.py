"""The host link's checks at the CP (hsb.cp.host_link), in-process: a frame of the active at a
stale epoch fences it and changes nothing, a host not registered is heard in nothing but its
registration and heartbeats, a fenced host's heartbeat renews no lease, the replies of a host
being demoted still count while another process of the host the handover demoted is refused
(and its close of a session it held leaves the new active's alone),
and a register frame's flags are the host's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import HeldJournal, cp_core, fake_host, pair_with_sessions, recording_terminal

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def replies(t: Any) -> list[tuple[int, Any]]:
    return [(f["id"], f["data"]) for f in frames(t) if f["t"] == "reply"]


def served(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """host-a active, host-b standby, T00001 with both sessions and message 1 delivered to host-a."""
    cp, a, b, t = pair_with_sessions(tmp_path)
    cp.terminal_msg(cp.terms["T00001"], 1, b"one")
    assert cp.terms["T00001"].held[1].delivered_epoch == cp.epoch
    return cp, a, b, t


@pytest.mark.parametrize("frame", ["reply", "open"])
async def test_a_frame_of_the_active_at_a_stale_epoch_fences_it_and_is_not_applied(tmp_path: Path, frame: str) -> None:
    cp, a, b, t = served(tmp_path)
    term = cp.terms["T00001"]
    if frame == "reply":
        a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "old", "epoch": cp.epoch - 1})
    else:
        cp.host_close(a, "T00001", "active")
        assert term.active is None
        a._handle({"t": "open", "terminal": "T00001", "kind": "active", "attrs": {}, "epoch": cp.epoch - 1})
    err = [f for f in frames(a) if f["t"] == "error"]
    assert err and err[0]["code"] == "fenced" and a.closed, err
    await asyncio.sleep(0)
    assert replies(t) == [] and 1 in term.held, "a stale frame was applied"
    if frame == "open":
        assert term.active is None


async def test_a_host_not_registered_is_heard_in_nothing_but_register_and_heartbeats(tmp_path: Path) -> None:
    cp, a, b, t = served(tmp_path)
    c = fake_host(cp, "host-c", record=True)
    c._handle({"t": "hb", "n": 1})
    assert not c.closed
    c._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "nobody's", "epoch": cp.epoch})
    err = [f for f in frames(c) if f["t"] == "error"]
    assert err and err[0]["code"] == "not_registered" and c.closed, err
    await asyncio.sleep(0)
    assert replies(t) == [] and 1 in cp.terms["T00001"].held


async def test_a_fenced_hosts_heartbeat_renews_no_lease(tmp_path: Path) -> None:
    """An active replaced by a grant is fenced from the grant on, before the epoch's record is
    durable: its heartbeats are answered without the `ack` that would renew its lease beside the
    new active's."""
    cp, a, b, t = served(tmp_path)
    HeldJournal(cp)  # the grant's record stays on its way
    a._handle({"t": "hb", "n": 7})
    assert [f.get("ack") for f in frames(a) if f["t"] == "hb"] == [7]
    a.last_rx -= 60  # silent past host_timeout
    cp.host_switchover(b, "active silent", False, "failover", peer_closed=True)
    assert a.fenced and not a.closed
    a._handle({"t": "hb", "n": 8})
    assert [f.get("ack") for f in frames(a) if f["t"] == "hb"] == [7], "a fenced host's lease renewed"


def handing_over(tmp_path: Path) -> tuple[Any, Any, Any, Any, HeldJournal]:
    """`served`, then a planned switchover to host-b whose grant record is on its way: host-a
    is being demoted."""
    cp, a, b, t = served(tmp_path)
    a.instance, b.instance = "ia", "ib"
    j = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    assert a.role == "demoting" and cp.active is not a
    return cp, a, b, t, j


async def test_the_reply_of_an_active_being_demoted_still_answers_its_message(tmp_path: Path) -> None:
    cp, a, b, t, j = handing_over(tmp_path)
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "answered", "epoch": cp.epoch - 1})
    assert not a.closed
    j.release()
    await asyncio.sleep(0)
    assert replies(t) == [(1, "answered")]


async def test_a_late_reply_from_another_process_of_the_demoted_host_is_refused(tmp_path: Path) -> None:
    """The reply a demoted active sent before it heard of the handover is ignored; one of the
    same epoch from a new process of that host (it restarted since) is not its late reply: refused."""
    cp, a, b, t, j = handing_over(tmp_path)
    j.release()
    cp.settle_flip()
    assert cp.active is b and a.role == "standby"
    old = cp.epoch - 1
    a.connection_lost(None)
    a2 = fake_host(cp, "host-a", record=True)
    a2.instance = "ia2"
    cp.host_register(a2, "standby", 2)
    assert cp.standby is a2
    a2._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "late", "epoch": old})
    err = [f for f in frames(a2) if f["t"] == "error"]
    assert err and err[0]["code"] == "not_active" and a2.closed, err


async def test_an_open_batch_item_that_is_not_a_terminal_and_its_attrs_is_refused(tmp_path: Path) -> None:
    cp, a, b, t = served(tmp_path)
    b._handle({"t": "open_batch", "kind": "standby", "items": [["T00002", {}, "extra"]]})
    err = [f for f in frames(b) if f["t"] == "error"]
    assert err and err[0]["code"] == "bad_fields" and b.closed, err
    assert cp.terms["T00002"].standby is None


async def test_a_host_that_says_it_marks_repeats_at_its_register_gets_messages_before_they_are_durable(tmp_path: Path) -> None:
    """`marks_repeats` and `adopt` in the register frame (hsb.cp.terminal_side._deliver_early)."""
    cp = cp_core(tmp_path, 2)
    cp.journal.durable = True  # (the memory-only journal behind HeldJournal: as if it wrote)
    j = HeldJournal(cp, ("a",))
    a = fake_host(cp, "host-a", record=True)
    a._handle({"t": "register", "role": "active", "marks_repeats": True, "adopt": True})
    a._handle({"t": "adopt", "epoch": cp.epoch, "items": [], "last": True})
    t = recording_terminal(cp, "T00001")
    a._handle({"t": "open", "terminal": "T00001", "kind": "active", "attrs": {}, "epoch": cp.epoch})
    cp.terminal_msg(cp.terms["T00001"], 1, b"one")
    assert [f["id"] for f in frames(a) if f["t"] == "deliver"] == [1], "not handed over before its record was durable"
    assert not [f for f in frames(t) if f["t"] == "ack"]
    j.release()


async def test_a_close_from_the_demoted_host_leaves_the_session_at_the_new_active(tmp_path: Path) -> None:
    """The demoted active's close of a session it held (sent before it heard of the grant) does
    not close the terminal's session at the new active (hsb.cp.host_sessions.host_close)."""
    cp, a, b, t, j = handing_over(tmp_path)
    j.release()
    cp.settle_flip()
    term = cp.terms["T00001"]
    assert cp.active is b and term.active is not None and term.active.host is b
    a._handle({"t": "close", "terminal": "T00001", "kind": "active", "epoch": cp.epoch - 1})
    assert not a.closed and term.active is not None and term.active.host is b
    assert not [f for f in frames(t) if f["t"] == "session" and f["state"] == "closed"]
