"""A CP and hosts of different max_frame, driven in-process through the CP's own code.

A message the CP took that a host's smaller frames cannot hold is answered by the CP itself
with an error reply (hsb.cp.pair_frames `_too_large_for`): one an earlier active had (or one
recovered from the journal) may have been processed, and the error says so and by whom; that
reply is nobody's reply frame (`replies_by_host`) and no service by the new active (the
switch's record). The limit on what terminals may send is what the two hosts of the pair can
take: a refused registration does not lower it, and a host another took the place of no longer
does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from hsb.cp.journal.format import encode as record
from hsb.cp.journal.recovery import recover, segment_name
from hsb.wire.framing import encode, payload_max
from tests.support.cpcore import cp_core, fake_host, flipped, journalled_cp, recording_terminal
from tests.support.procs import until

pytestmark = pytest.mark.timeout(60)

BIG, SMALL = 64 * 1024, 8 * 1024
TOO_BIG = payload_max(SMALL) + 10  # what the CP and a host of its max_frame take, a host of SMALL's not


def replies(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return [f for f in p.transport.frames() if f.get("t") == "reply"]


async def test_the_cps_own_error_reply_is_no_reply_frame_of_the_host(tmp_path: Path) -> None:
    """`replies_by_host` counts the reply frames taken from each host: the error the CP makes up
    for a message too large for the active's frames is not one of them; the active's own reply
    to the next message is."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    p = recording_terminal(cp, "T00001", None)
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * (payload_max(SMALL) + 10)}))
    p.data_received(encode({"t": "msg", "id": 2, "data": b"fits"}))
    h = fake_host(cp, "host-a", None, record=True)
    h.max_frame = SMALL  # (as its register said)
    cp.host_register(h, "active", 1)
    cp.host_open(h, "T00001", "active", {})
    await asyncio.sleep(0)
    assert [r["id"] for r in replies(p)] == [1] and "too large" in replies(p)[0]["data"]
    assert cp.replies_by_host.get("host-a", 0) == 0
    cp.host_reply(h, "T00001", 2, "ok")
    assert [r["id"] for r in replies(p)] == [1, 2] and cp.replies_by_host["host-a"] == 1
    h.connection_lost(None)


def host(cp: Any, name: str, role: str, max_frame: int) -> Any:
    h = fake_host(cp, name, None, record=True)
    h.max_frame = max_frame  # (as its register said)
    cp.host_register(h, role, 1)
    return h


async def test_a_message_the_old_active_had_is_answered_as_maybe_processed_not_as_a_reply_of_the_new_one(tmp_path: Path) -> None:
    """Host A (the CP's max_frame) had message 1; B, of smaller frames, registered as the standby
    after it came, and A is lost: B cannot take message 1, which the CP answers with an error.
    A may have processed it, so the error says so and names A (the terminal must check before it
    sends it again, not be told it may); B's first reply is the switch's, not that error."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    a = host(cp, "host-a", "active", BIG)
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(a, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * TOO_BIG}))
    p.data_received(encode({"t": "msg", "id": 2, "data": b"fits"}))
    term = cp.terms["T00001"]
    assert term.held[1].delivered_epoch == 1 == term.held[2].delivered_epoch  # both with A
    b = host(cp, "host-b", "standby", SMALL)
    cp.host_open(b, "T00001", "standby", {})
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    got = replies(p)
    assert [r["id"] for r in got] == [1], got
    text = got[0]["data"]
    assert "too large for the active host host-b" in text and "may have been processed by host-a" in text, text
    assert "check whether it took effect before sending it again" in text and "not processed" not in text, text
    rec = cp.switchovers[-1]
    assert rec["to"] == "host-b" and rec["first_reply_ms"] is None and rec["first_redelivered_reply_ms"] is None, rec
    assert cp.replies_by_host.get("host-b", 0) == 0
    cp.host_reply(b, "T00001", 2, "ok")  # B's own reply to the message it did get: the switch's first
    assert [r["id"] for r in replies(p)] == [1, 2]
    assert rec["first_reply_ms"] is not None and rec["all_served_ms"] is not None, rec
    b.connection_lost(None)


async def test_a_message_no_host_had_is_answered_as_not_processed(tmp_path: Path) -> None:
    """Taken while no host was registered, and too large for the first that registers: nobody
    had it, and the error says it was not processed."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    p = recording_terminal(cp, "T00001", None)
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * TOO_BIG}))
    h = host(cp, "host-a", "active", SMALL)
    cp.host_open(h, "T00001", "active", {})
    await asyncio.sleep(0)
    got = replies(p)
    assert [r["id"] for r in got] == [1] and "it was not processed" in got[0]["data"] and "may have" not in got[0]["data"], got
    h.connection_lost(None)


async def test_a_recovered_message_is_answered_as_maybe_processed_by_the_active_before_the_restart(tmp_path: Path) -> None:
    """Restored from the journal (the CP restarted, maybe after delivering it), too large for the
    active that registers now with smaller frames: it may have been processed before the
    restart, and the error says so and names the active the journal recorded."""
    d = tmp_path / "j"
    d.mkdir()
    (d / segment_name(1)).write_bytes(record(["ck", 3, "host-a", 0, {}]) + record(["a", "T00001", 1, b"x" * TOO_BIG]))
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    cp.restore(recover(d))
    assert cp.terms["T00001"].held[1].delivered_epoch == -1
    p = recording_terminal(cp, "T00001", None)
    h = host(cp, "host-a", "active", SMALL)  # (restarted with a smaller max_frame)
    cp.host_open(h, "T00001", "active", {})
    await asyncio.sleep(0)
    got = replies(p)
    assert [r["id"] for r in got] == [1], got
    text = got[0]["data"]
    assert "may have been processed by host-a (the active before the CP restarted)" in text and "not processed" not in text, text
    h.connection_lost(None)


@pytest.mark.parametrize("refusal", ["bad_role", "active_exists", "standby_exists"])
async def test_a_refused_registration_leaves_the_terminals_limit_as_it_was(tmp_path: Path, refusal: str) -> None:
    """A third hsbd (or one misconfigured) with a small max_frame is refused: it is no host of the
    pair, and terminals may still send what the two hosts take."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    host(cp, "host-a", "active", BIG)
    host(cp, "host-b", "standby", BIG)
    before = cp.max_data
    assert before == payload_max(BIG)
    role = {"bad_role": "primary", "active_exists": "active", "standby_exists": "standby"}[refusal]
    c = host(cp, "host-c", role, 2048)
    c.flush()
    assert c.closed and [f["code"] for f in c.transport.frames() if f["t"] == "error"] == [refusal]
    assert cp.max_data == before


async def test_a_host_whose_place_another_took_no_longer_limits_the_terminals(tmp_path: Path) -> None:
    """B (small frames) was the standby. While it is away it still counts (it may come back);
    once C takes its place as the standby, the pair is A and C, and the limit is theirs."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    host(cp, "host-a", "active", BIG)
    b = host(cp, "host-b", "standby", SMALL)
    assert cp.max_data == payload_max(SMALL)
    b.connection_lost(None)
    assert cp.standby is None and cp.max_data == payload_max(SMALL)  # away, not gone: it may come back
    b2 = host(cp, "host-b", "standby", SMALL)  # back: still the pair's
    assert cp.standby is b2 and cp.max_data == payload_max(SMALL)
    b2.connection_lost(None)  # type: ignore[attr-defined]  # (mypy keeps cp.standby narrowed to None across host())
    c = host(cp, "host-c", "standby", BIG)
    assert cp.standby is c and cp.max_data == payload_max(BIG)


def _journalled_cp(tmp_path: Path, d: Path, recovered: Any = None) -> Any:
    """A CP of 2 terminals and max_frame BIG on a real journal in `d` (tests.support.cpcore.journalled_cp)."""
    return journalled_cp(tmp_path, d, 2, recovered, cp=f"max_frame = {BIG}\n")


def _refused(cp: Any, size: int) -> bool:
    """A terminal's message of `size` bytes is refused (message_too_large, no ack), not taken."""
    p = recording_terminal(cp, "T00002")
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * size}))
    p.flush()
    frames = p.transport.frames()
    refused = [f["code"] for f in frames if f["t"] == "error"] == ["message_too_large"]
    assert refused != any(f["t"] == "ack" for f in frames), frames
    return refused


async def test_the_pairs_frames_survive_a_restart_through_compaction_and_the_snapshot(tmp_path: Path) -> None:
    """The max_frame each host of the pair said is journalled ("f") and carried by every
    checkpoint: once the segment holding the record is dropped (compaction), and again through
    the takeover snapshot of a restarted CP, the restarted CP limits the terminals as the CP
    before it did, before any host registers again. A journal of before the record (no "f", a
    checkpoint without "frames") still reads back: no limit but the CP's own."""
    from hsb.cp.journal.format import scan

    d = tmp_path / "j"
    cp = _journalled_cp(tmp_path, d)
    try:
        host(cp, "host-a", "active", BIG)
        host(cp, "host-b", "standby", SMALL)
        await cp.journal.drain()
        assert cp.max_data == payload_max(SMALL)
        assert recover(d, truncate=False).frames == {"host-a": BIG, "host-b": SMALL}  # the record itself
        first = cp.journal.segments[0]
        for i in range(1, 301):  # traffic, all settled: the segment of the record goes
            cp.journal.append(["a", "T00001", i, "x" * 20])
            cp.journal.append(["d", "T00001", i])
        await cp.journal.drain()
        cp.journal_tick()
        assert cp.journal.segments[0] > first
        await until(lambda: not list(d.glob(f"seg-*-{first:08d}.hsbj")), 5, what="the record's segment deleted")
    finally:
        cp.journal.close()
    recs = [r for f in sorted(d.glob("seg-*.hsbj")) for r in scan(f.read_bytes())[0]]
    assert not [r for r in recs if r[0] == "f"], "the record is still there: nothing was compacted"
    r = recover(d)
    assert list(r.frames.items()) == [("host-a", BIG), ("host-b", SMALL)]  # (in order: the oldest goes first)
    with structlog.testing.capture_logs() as logs:
        cp2 = _journalled_cp(tmp_path, d, r)  # restarted: its snapshot's checkpoint carries them
    said = [(e["host"], e["recorded"]) for e in logs if e["event"] == "max_frame_mismatch"]
    assert said == [("host-b", True)], logs  # the limit is said at the restart, not at a registration
    try:
        assert cp2.max_data == payload_max(SMALL) and _refused(cp2, TOO_BIG)
    finally:
        cp2.journal.close()
    assert list(recover(d).frames.items()) == [("host-a", BIG), ("host-b", SMALL)]
    old = tmp_path / "old"  # a journal of before: epoch and active, no frames
    old.mkdir()
    (old / segment_name(1)).write_bytes(record(["ck", 3, "host-a", 0, {}, {"paused": False}]) + record(["e", 4, "host-a"]))
    r_old = recover(old)
    assert r_old.frames == {} and r_old.epoch == 4
    cp3 = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    cp3.restore(r_old)
    assert cp3.max_data == payload_max(BIG) and not _refused(cp3, TOO_BIG)


async def test_a_standbys_registered_goes_at_once_and_no_later_ack_passes_its_frames_record(tmp_path: Path, monkeypatch: Any) -> None:
    """What docs/cp-journal.md says of a standby's `f` record: its `registered` does not wait for
    the record (the group commit holding it is held here, as a hung mount would), the new limit
    holds at once (a message too large for it is refused), and a message taken after the
    registration is acknowledged only once the record is durable (on disk when its ack comes)."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    d = tmp_path / "j"
    cp = _journalled_cp(tmp_path, d)
    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    try:
        host(cp, "host-a", "active", BIG)
        await cp.journal.drain()
        assert recover(d, truncate=False).frames == {"host-a": BIG}
        hook.hold()
        b = host(cp, "host-b", "standby", SMALL)
        await until(hook.holding.is_set, 5, what="the group commit of host-b's f record held")
        b.flush()
        assert [f["role"] for f in b.transport.frames() if f["t"] == "registered"] == ["standby"]  # not waiting for it
        assert _refused(cp, TOO_BIG)  # the limit holds at once
        p = recording_terminal(cp, "T00001")
        p.data_received(encode({"t": "msg", "id": 1, "data": b"fits"}))
        p.flush()
        assert not [f for f in p.transport.frames() if f["t"] == "ack"], "acknowledged before host-b's f record was durable"
        hook.release()

        def acked() -> bool:
            p.flush()
            return any(f["t"] == "ack" for f in p.transport.frames())

        await until(acked, 5, what="the ack once the journal writes again")
        assert recover(d, truncate=False).frames == {"host-a": BIG, "host-b": SMALL}
    finally:
        hook.release()
        cp.journal.close()
