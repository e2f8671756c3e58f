"""The sequential area (114) as a ring: appends refused before a batch, group commit, wrap,
a reader one ring behind or lapped, generations (a writer made active again, a new generation
seen without header checks, a stale one), a group bigger than the ring, and a poll's bound.
Torn and corrupt records: tests/test_takeover_ring_torn.py; failing storage:
tests/test_takeover_ring_storage.py; random interleavings against a model:
tests/test_takeover_ring_model.py; the host's ring writer: tests/test_takeover_ring_writer.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    NoBatchWritten,
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverWriter,
    batch_read,
)
from tests.support.ring import Changes, E, drain, make, setup_pair


def test_append_before_batch_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    with TakeoverWriter(path, terminals=6) as w, pytest.raises(NoBatchWritten):
        w.append_group([SessionEntry("T1", {}, True)])


def test_group_commit_packs_records_and_syncs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 400, 4096)
    syncs: list[int] = []
    real = fileio.sync

    def sync(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(fileio, "sync", sync)
    w, r = setup_pair(path, terminals=15)
    assert len(syncs) == 2  # batch write: batch records, then header
    syncs.clear()
    ch = Changes()
    group = ch.take(1000)
    first, last = w.append_group(group)
    assert (first, last) == (1, -(-1000 // 15))  # 67 records for 1,000 changes
    assert len(syncs) == 1
    assert drain(r) == group
    assert w.append_group([]) == (68, 67) and len(syncs) == 1


def test_ring_wraps_many_times_reader_sees_every_change_once_in_order(tmp_path: Path) -> None:
    path = make(tmp_path, 12)  # B=2, K=9
    w, r = setup_pair(path)
    k = w.layout.ring_slots if w.layout else 0
    assert k == 9
    ch, rng = Changes(), random.Random(7)
    written: list[SessionEntry] = []
    seen: list[SessionEntry] = []
    while w.last_seq < 60 * k:
        group = ch.take(rng.randint(1, 3 * E))  # 1..3 records per group
        w.append_group(group)
        written += group
        if rng.random() < 0.5 or w.last_seq - (r.next_seq - 1) > k - 3 * 1:
            seen += drain(r)
    seen += drain(r)
    assert seen == written
    assert r.next_seq == w.next_seq


def test_reader_exactly_one_ring_behind_is_not_lapped(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    k = 9
    ch = Changes()
    for _ in range(5):  # several laps
        batch = ch.take(k * E)  # exactly K records: fills the ring once
        w.append_group(batch)
        res = r.poll()
        assert res.status is PollStatus.NEW and res.entries == batch and (res.last_seq - res.first_seq + 1) == k
    w.append_group(ch.take(k * E + 1))  # K+1 records: the oldest one unread is overwritten
    res = r.poll()
    assert res.status is PollStatus.LAPPED
    assert res.record == w.layout.ring_record(r.next_seq) if w.layout else False
    assert "overtook" in res.reason and not res.entries and res.needs_resync
    assert r.poll().status is PollStatus.LAPPED  # the cursor did not move


def test_lapped_reader_resyncs_through_a_new_batch(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(20 * E))
    assert r.poll().status is PollStatus.LAPPED
    state = ch.take(6)
    w.batch_write(2, state)
    assert r.poll().status is PollStatus.NEW_GENERATION
    snap = batch_read(path, expected_startup_id=2)
    assert snap.entries == state
    r2 = RingReader(path, snap.header)
    assert r2.poll().status is PollStatus.NOTHING_NEW  # old-generation records are not "new"
    more = ch.take(4)
    w.append_group(more)
    assert drain(r2) == more


@pytest.mark.parametrize("torn_header", [False, True])
def test_a_writer_made_active_again_writes_above_the_other_hosts_generation(tmp_path: Path, torn_header: bool) -> None:
    """Host A writes, is demoted (planned switchover, same process, its writer kept), host B
    writes batches and ring records, then A is made active again: A's new batch must take a
    generation above B's, or B (now following A) reads B's own old ring records as new and
    passes over A's real ones (standby sessions that silently differ from the active's).
    `torn_header`: B crashed while rewriting record 0, so only B's records say its generation."""
    path = make(tmp_path, 64)
    a = TakeoverWriter(path, terminals=6)
    a.batch_write(1, [])  # generation 1
    b = TakeoverWriter(path, terminals=6)
    b.batch_write(2, [])  # generation 2: A's writer still thinks 1
    stale = [SessionEntry("T00007", {"who": "b"}, True), SessionEntry("T00007", {"who": "b"}, False)]
    b.append_group(stale)
    if torn_header:
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff")
    h = a.batch_write(3, [])  # A is active again
    assert h.generation == 3, h.generation
    real = [SessionEntry("T00009", {"who": "a"}, True), SessionEntry("T00009", {"who": "a"}, False)]
    a.append_group(real)
    snap = batch_read(path, expected_startup_id=3)
    got = drain(RingReader(path, snap.header, max_records=1000))
    assert [(e.terminal, e.attrs) for e in got] == [(e.terminal, e.attrs) for e in real]
    a.close()
    b.close()


def test_new_generation_seen_in_the_ring_without_header_checks(tmp_path: Path) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path, terminals=6)  # B=2
    snap = batch_read(path)
    r = RingReader(path, snap.header, check_header=False)
    w.close()
    ch = Changes()
    # A new active with more terminals: B=5, so its batch records cover our old ring slots.
    with TakeoverWriter(path, terminals=15) as w2:
        w2.batch_write(9, ch.take(15))
        res = r.poll()
        assert res.status is PollStatus.NEW_GENERATION and res.generation == 2
        assert res.record == snap.layout.ring_first


def test_stale_generation_in_slot_is_nothing_new(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(9 * E))  # every slot holds a generation-1 record
    w.batch_write(2, [])
    r2 = RingReader(path, batch_read(path).header, check_header=False)
    assert r2.poll().status is PollStatus.NOTHING_NEW
    g = ch.take(2)
    w.append_group(g)
    assert drain(r2) == g


def test_group_bigger_than_the_ring(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    first, last = w.append_group(Changes().take(25 * E))
    assert (first, last) == (1, 25)
    assert r.poll().status is PollStatus.LAPPED
    r2 = RingReader(path, batch_read(path).header, next_seq=17)  # the 9 newest are intact
    res = r2.poll()
    assert res.status is PollStatus.NEW and (res.first_seq, res.last_seq) == (17, 25)


def test_max_records_bounds_one_poll(tmp_path: Path) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    r = RingReader(path, batch_read(path).header, max_records=4)
    ch = Changes()
    written = ch.take(30 * E)
    w.append_group(written)
    res = r.poll()
    assert res.status is PollStatus.NEW and (res.first_seq, res.last_seq) == (1, 4)
    assert res.entries + drain(r) == written
