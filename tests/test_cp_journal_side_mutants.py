"""Tests from a mutation audit of hsb/cp/journal_side.py: what a restarted CP restores from the
recovered journal (`restore`), what every new segment's checkpoint carries (`_checkpoint`), the
takeover snapshot (`snapshot`, `repin`) and the carrying of live records out of old segments
(`journal_tick`). Each pins a behaviour that a single-point change of that module broke while
every other journal test still passed (docs/cp-journal.md: "Recovery", "Compaction")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from hsb.cp.journal.recovery import Recovered, apply, recover
from hsb.wire.framing import encode
from tests.support.cpcore import HeldJournal, cp_core, fake_host, journalled_cp, recording_terminal

pytestmark = pytest.mark.timeout(30)


def _recovered(*recs: list[Any], seg: int = 1) -> Recovered:
    """What recovery reads from a journal of `recs` (one segment, number `seg`)."""
    r = Recovered()
    for rec in recs:
        apply(r, rec, seg)
    r.highest_segment = seg
    return r


def _journalled_cp(tmp_path: Path, d: Path, recovered: Recovered | None = None) -> Any:
    """A CP of 3 terminals on a real journal in `d` (tests.support.cpcore.journalled_cp)."""
    return journalled_cp(tmp_path, d, 3, recovered)


# --- restore ------------------------------------------------------------------------------------


def test_a_restarted_cp_stays_paused_and_keeps_the_switch_history(tmp_path: Path) -> None:
    """The operator's pause and the switch history are the journal's: a CP restarted on it is
    still paused (no automatic failover in the middle of a maintenance) and `hsbctl history`
    still lists the switches of before, and its next checkpoint carries both on."""
    entry = {"kind": "failover", "at": 1.0, "epoch": 3, "from": "host-a", "to": "host-b"}
    r = _recovered(["ck", 3, "host-b", 1, {}, {"history": [entry], "paused": False}], ["p", True])
    cp = cp_core(tmp_path, 2)
    cp.restore(r)
    assert cp.paused is True
    assert cp.history.entries == [entry]
    extra = cp._checkpoint()[5]
    assert extra["paused"] is True and extra["history"] == [entry]


@pytest.mark.parametrize("kind", ["a", "r"], ids=["held", "kept-reply"])
def test_a_terminal_removed_from_the_table_keeps_its_messages_and_is_named(tmp_path: Path, kind: str) -> None:
    """A terminal no longer in the CP's table whose journal still holds a message (held, or only
    a kept reply) is kept, never dropped: restored as a terminal of its own, its message
    counted, and the warning names it. One with neither (an acknowledgement only) is not made."""
    cp = cp_core(tmp_path, 2)
    recs: list[list[Any]] = [["ck", 1, "host-a", 1, {"OLD1": 4, "OLD2": 9}, {}], [kind, "OLD1", 5, "x"]]
    with structlog.testing.capture_logs() as logs:
        cp.restore(_recovered(*recs))
    assert "OLD1" in cp.terms and "OLD2" not in cp.terms
    t = cp.terms["OLD1"]
    if kind == "a":
        assert list(t.held) == [5] and cp.counts.held == 1
    else:
        assert list(t.replies) == [5] and cp.counts.kept == 1 and t.resuming
    said = [e for e in logs if e["event"] == "journal_terminals_not_in_table"]
    assert len(said) == 1 and said[0]["terminals"] == ["OLD1"] and said[0]["count"] == 1


# --- the checkpoint, the snapshot and carrying forward: a round trip through compaction ---------

ENTRY = {"kind": "failover", "at": 1.0, "epoch": 4, "from": "host-b", "to": "host-a"}
BEFORE: list[list[Any]] = [
    ["ck", 4, "host-a", 1, {"T00003": 7}, {"history": [ENTRY], "paused": True}],
    # T00001: two messages held, logged off holding them
    ["a", "T00001", 1, "h1"],
    ["a", "T00001", 2, "h2"],
    ["o", "T00001", 2],
    # T00002: a reply kept (3), confirmed up to 2, a logoff up to 2 whose replies are gone
    ["a", "T00002", 2, "q2"],
    ["r", "T00002", 2, "r2"],
    ["c", "T00002", 2],
    ["o", "T00002", 2],
    ["a", "T00002", 3, "q3"],
    ["r", "T00002", 3, "r3"],
]


def _settled_traffic(cp: Any, first: int, n: int = 300) -> None:
    """`n` messages of a terminal no longer in the table, each answered: settled records that fill
    segments (what compaction drops), nothing the CP restores."""
    for i in range(first, first + n):
        cp.journal.append(["a", "GONE", i, "x" * 20])
        cp.journal.append(["d", "GONE", i])


async def _compacted_past(cp: Any, d: Path, seg: int) -> None:
    """Traffic until the segment `seg` is dropped: each journal tick carries the live records of
    old segments forward."""
    from tests.support.procs import until

    j = cp.journal
    for k in range(20):
        _settled_traffic(cp, 1000 * (k + 1))
        await j.drain()
        cp.journal_tick()
        await j.drain()
        if j.segments[0] > seg:
            break
    assert j.segments[0] > seg, f"segment {seg} never went: {list(j.segments)}"
    await until(lambda: not list(d.glob(f"seg-*-{seg:08d}.hsbj")), 5, what=f"segment {seg} deleted")


def _assert_restored(cp: Any, confirmed: int = 2) -> None:
    t1, t2, t3 = (cp.terms[f"T0000{i}"] for i in (1, 2, 3))
    assert [(h.id, h.data) for h in t1.held.values()] == [(1, "h1"), (2, "h2")]
    assert t1.leaving and t1.logoff_upto == t1.bye_upto == 2 and t1.last_acked == t1.durable_acked == 2
    assert set(cp.holding) == {t1}
    assert not t2.held and [(k.id, k.data) for k in t2.replies.values()] == [(3, "r3")]
    assert t2.resuming and not t2.leaving and t2.confirmed == confirmed and t2.last_acked == 3 and t2.bye_upto == 2
    assert t3.last_acked == t3.durable_acked == 7 and not t3.held and not t3.replies
    assert cp.counts.held == 2 and cp.counts.kept == 1
    assert cp.counts.held_data == t1.held_bytes > 0 and cp.counts.kept_data == t2.kept_bytes > 0
    assert cp.epoch == 4 and cp.recorded_active == cp.restored_active == "host-a"
    assert cp.paused is True and cp.history.entries == [ENTRY]
    assert "GONE" not in cp.terms


async def test_what_a_cp_holds_survives_compaction_of_every_segment_it_was_written_in(tmp_path: Path) -> None:
    """A CP restored from a journal writes it all again (the takeover snapshot); traffic then
    fills segments, and every tick carries the few live records of the oldest forward, twice
    over, until no segment of the snapshot, nor of the first carrying, is left. What a CP then
    restarted on that journal restores is what the first one had: each terminal's held messages,
    kept replies, confirmation point, highest acknowledged id and logoff (from the checkpoints
    and the carried records), the epoch, the active, the pause and the switch history."""
    d = tmp_path / "j"
    cp = _journalled_cp(tmp_path, d, _recovered(*BEFORE, seg=7))
    _assert_restored(cp)
    try:
        first = cp.journal.first_seg
        # (repin: every live record sits in the snapshot's segment now, not the old one's)
        assert first == 8 and cp.terms["T00001"].held[1].seg == cp.terms["T00002"].replies[3].seg == first
        await _compacted_past(cp, d, first)
        carried = cp.terms["T00001"].held[1].seg
        assert carried > first and cp.terms["T00002"].replies[3].seg > first
        await _compacted_past(cp, d, max(carried, cp.terms["T00002"].replies[3].seg))
    finally:
        cp.journal.close()
    r = recover(d)
    assert r.logoff == {"T00001": 2, "T00002": 2}  # (from a checkpoint: the "o" records went)
    (tmp_path / "again").mkdir()
    cp2 = _journalled_cp(tmp_path / "again", d, r)
    try:
        # (the "c" record is no live record: nothing carries it, and once its segment is gone
        # nothing before it is left for it to settle; the kept reply above it is carried)
        _assert_restored(cp2, confirmed=0)
    finally:
        cp2.journal.close()


def test_more_held_than_the_cps_own_bound_is_said_at_the_restore(tmp_path: Path) -> None:
    """A journal holding more than `held_total_bytes` (the bound lowered across the restart): the
    restored CP is over its own bound at once, before any terminal sends, and says so."""
    cp = cp_core(tmp_path, 2, cp="held_total_bytes = 4096\n")
    with structlog.testing.capture_logs() as logs:
        cp.restore(_recovered(["a", "T00001", 1, "y" * 3000], ["a", "T00002", 1, "z" * 3000]))
    assert cp.counts.held_data >= 6000 and cp.total_over
    assert [e for e in logs if e["event"] == "cp_held_total_reached"], [e["event"] for e in logs]


async def test_a_checkpoint_names_an_acknowledged_id_whose_record_is_not_yet_durable(tmp_path: Path) -> None:
    """The checkpoint goes into the journal after every record appended before it, so it carries
    each terminal's highest id taken (`last_acked`), not only the durable one: a checkpoint of
    the lower id, once the segment of the message's own record is dropped, would let a restarted
    CP take that id again as a new message."""
    cp = cp_core(tmp_path, 2)
    fake_host(cp, "host-a", "active")
    held = HeldJournal(cp, kinds=("a",))
    p = recording_terminal(cp, "T00001", None)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    t = cp.terms["T00001"]
    assert t.last_acked == 1 and t.durable_acked == 0 and held.held  # (its "a" record on its way)
    assert cp._checkpoint()[4] == {"T00001": 1}
    held.release()
    assert t.durable_acked == 1 and cp._checkpoint()[4] == {"T00001": 1}


async def test_a_checkpoint_names_the_active_of_now_not_the_one_restored(tmp_path: Path) -> None:
    """Restored with host-a as the active: once host-b is granted the role its checkpoints name
    host-b at the new epoch, and once host-b stops normally they name nobody (a CP restarted on a
    journal whose older records were compacted away must not wait for, nor report as "not back",
    an active of before)."""
    cp = cp_core(tmp_path, 2)
    cp.restore(_recovered(["ck", 3, "host-a", 1, {}, {}]))
    assert cp._checkpoint()[1:3] == [3, "host-a"]
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    assert cp.active is a and cp.standby is b
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    assert cp.active is b
    assert cp._checkpoint()[1:3] == [cp.epoch, "host-b"] and cp.epoch > 3
    cp.host_stopping(b)
    assert cp._checkpoint()[2] is None


async def test_every_checkpoint_names_the_generations_snapshot_segment(tmp_path: Path) -> None:
    """Each checkpoint says which segment holds this generation's takeover snapshot ("first"):
    recovery takes a generation whose snapshot segment has gone (settled, so it was durable) as
    complete, but one whose snapshot segment is there without its end as a CP that died writing
    it, and reads the generation before. A checkpoint naming another segment would make a torn
    snapshot look complete, and a restart would start from half of it."""
    from hsb.cp.journal.format import encode as record
    from hsb.cp.journal.format import scan
    from hsb.cp.journal.recovery import _complete, segment_name

    d = tmp_path / "j"
    cp = _journalled_cp(tmp_path, d, _recovered(["a", "T00001", 1, "h1"]))
    try:
        j = cp.journal
        first, gen = j.first_seg, j.gen
        _settled_traffic(cp, 1000)
        await j.drain()
        assert len(j.segments) > 1
        cks = {}
        for n in list(j.segments):
            p = d / segment_name(n, gen)
            recs, _, _ = scan(p.read_bytes(), str(p), until="ck")
            cks[n] = recs[0]
    finally:
        cp.journal.close()
    assert all(ck[0] == "ck" and ck[5]["first"] == first for ck in cks.values()), cks
    later = max(cks)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / segment_name(first, gen)).write_bytes(record(cks[first]))  # its checkpoint, not its snapshot
    (torn / segment_name(later, gen)).write_bytes(record(cks[later]))
    assert not _complete(gen, [(first, torn / segment_name(first, gen))])
    assert _complete(gen, [(later, torn / segment_name(later, gen))])
