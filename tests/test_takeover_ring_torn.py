"""The takeover file's ring (the sequential area, 114) torn or corrupt: a flipped byte and a
short write are torn and never applied, a truncated file reads as torn, a damaged record the
standby names is cleared by the next batch, and a record consistent but in the wrong place, or a
batch's record in the ring, is corrupt; a header of another batch write of the same generation
is a new generation."""

from __future__ import annotations

import os
from pathlib import Path

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    PollStatus,
    RingReader,
    SessionEntry,
    batch_read,
)
from hsb.takeover.layout import KIND_RING
from hsb.takeover.records import encode_entry, encode_payload, pack_record
from tests.support.ring import Changes, E, R, drain, make, setup_pair


def test_flipped_byte_is_torn_and_never_applied(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    a, b = ch.take(E), ch.take(E)
    w.append_group(a)
    w.append_group(b)
    assert w.layout is not None
    rec2 = w.layout.ring_record(2)
    with open(path, "r+b") as f:
        f.seek(rec2 * R + 40)
        orig = f.read(1)
        f.seek(rec2 * R + 40)
        f.write(bytes([orig[0] ^ 1]))
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == a  # the good record before the torn one
    for _ in range(3):
        res = r.poll()
        assert res.status is PollStatus.TORN and res.record == rec2 and "checksum" in res.reason
        assert not res.entries and not res.needs_resync
    with open(path, "r+b") as f:  # the write completes
        f.seek(rec2 * R + 40)
        f.write(orig)
    assert drain(r) == b


def test_a_damaged_ring_record_the_standby_names_is_cleared_by_the_next_batch(tmp_path: Path) -> None:
    """A ring record left torn (a crash mid ring write) past the batch area: a batch write
    rewrites records 0..B only, so a standby that catches up to it after the resync would find
    it torn again and ask again, at every pass. The resync names it, and the batch write
    clears it: the standby then waits there for the ring, and reads what comes."""
    path = make(tmp_path, 16)
    w, r = setup_pair(path)
    ch = Changes()
    first = ch.take(E)
    w.append_group(first)
    w.append_group(ch.take(E))
    assert w.layout is not None
    rec2 = w.layout.ring_record(2)
    with open(path, "r+b") as f:  # seq 2 torn for good
        f.seek(rec2 * R + 40)
        orig = f.read(1)
        f.seek(rec2 * R + 40)
        f.write(bytes([orig[0] ^ 1]))
    assert drain(r, until=PollStatus.TORN) == first
    state = ch.take(6)
    w.batch_write(2, state, clear=rec2)  # the resync, naming the record
    snap = batch_read(path, expected_startup_id=2)
    r2 = RingReader(path, snap.header, max_records=1000)
    assert r2.poll().status is PollStatus.NOTHING_NEW  # the new ring's seq 1: not written yet
    w.append_group(ch.take(E))
    assert r2.poll().status is PollStatus.NEW
    res = r2.poll()  # seq 2 of the new ring is the record that was torn: empty now, not torn
    assert res.status is PollStatus.NOTHING_NEW, res
    more = ch.take(2 * E)
    w.append_group(more)
    assert drain(r2) == more
    # a record inside the new batch, or the header, is written over anyway: nothing else changes
    w.batch_write(3, state, clear=1)
    assert batch_read(path, expected_startup_id=3).entries == state
    assert w.layout is not None
    w.batch_write(4, state, clear=w.layout.batch_records)  # the batch area's last record: its entries kept
    assert batch_read(path, expected_startup_id=4).entries == state
    w.close()


def test_short_write_is_torn_until_complete(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    for _ in range(9):  # fill the ring once: every slot holds an older record
        w.append_group(ch.take(E))
    drain(r)
    assert w.layout is not None
    seq = w.next_seq
    recno = w.layout.ring_record(seq)
    group = ch.take(E)
    full = pack_record(KIND_RING, w.generation, seq, encode_payload([encode_entry(e) for e in group]), R, E, attempt=w.attempt)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, full[:40], recno * R)  # only the first 40 bytes landed
        res = r.poll()
        assert res.status is PollStatus.TORN and res.record == recno
        os.pwrite(fd, full, recno * R)
    finally:
        os.close(fd)
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == group and res.first_seq == seq


def test_truncated_file_reads_as_torn(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    w.append_group(Changes().take(E))
    assert w.layout is not None
    os.truncate(path, w.layout.ring_record(1) * R + 100)
    res = r.poll()
    assert res.status is PollStatus.TORN and "short read" in res.reason


def test_consistent_but_misplaced_record_is_corrupt(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    assert w.layout is not None
    payload = encode_payload([encode_entry(SessionEntry("X", {}, True))])
    with fileio.RecordWriter(path, R) as io:  # seq 5 in the slot of seq 1
        io.write(w.layout.ring_record(1), pack_record(KIND_RING, w.generation, 5, payload, R, 1, attempt=w.attempt))
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and "does not belong" in res.reason and res.needs_resync


def test_a_header_of_another_batch_write_of_the_same_generation_is_a_new_generation(tmp_path: Path) -> None:
    """A writer that never saw this generation's batch write (the try failed after its header
    landed; a restart, the other host) writes the generation again with an attempt of its own: a
    reader following the first must resync, not wait for ever at ring records of the other try."""
    from dataclasses import replace

    from hsb.takeover.records import encode_header
    from hsb.takeover.writer import new_attempt

    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(E))
    assert len(drain(r)) == E
    h = fileio.check_file(path)
    with fileio.RecordWriter(path, R) as io:
        io.write(0, encode_header(replace(h, attempt=new_attempt(h.attempt))))
    res = r.poll()
    assert res.status is PollStatus.NEW_GENERATION and res.needs_resync, res
    assert "another batch write of generation" in res.reason
    w.close()


def test_a_batch_record_of_this_generation_in_the_ring_is_corrupt(tmp_path: Path) -> None:
    """A batch record of this very batch write (checksum, generation, attempt and seq all fit)
    where the ring's seq 1 belongs, a misdirected write: never applied as ring entries."""
    from hsb.takeover.layout import KIND_BATCH

    path = make(tmp_path, 16)
    w, r = setup_pair(path)
    assert w.layout is not None
    h = fileio.check_file(path)
    payload = encode_payload([encode_entry(e) for e in Changes().take(1)])
    with fileio.RecordWriter(path, R) as io:
        io.write(w.layout.ring_record(1), pack_record(KIND_BATCH, h.generation, 1, payload, R, 1, attempt=h.attempt))
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and not res.entries and res.needs_resync, res
    assert "a batch record of this generation in the ring" in res.reason
    w.close()
