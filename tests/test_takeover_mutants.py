"""Tests from a hand-made mutation audit of hsb/takeover/layout.py, records.py and reader.py: each
pins a behaviour that no other test held (a mutant of the code there passed the takeover suite).
Everything goes through the package's own API on real files in tmp_path: write with the writer,
damage, truncate or wrap, read with the reader, and look at entries, statuses and errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.takeover import (
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverFileTooSmall,
    TakeoverWriter,
    batch_read,
    batch_records_for,
    entries_per_record,
    size_check,
)
from hsb.takeover.errors import BatchReadError, HeaderCorrupt
from hsb.takeover.layout import CRC_OFFSET, KIND_BATCH, KIND_RING, MAX_RECORD_SIZE, RECORD_HEADER, RECORD_HEADER_SIZE
from hsb.takeover.records import Header, crc_of, decode_header, decode_payload, encode_entry, encode_header, encode_payload, pack_record, parse_record
from tests.support.ring import E, R, make, setup_pair

pytestmark = pytest.mark.timeout(60)

_FIELDS = ("magic", "kind", "version", "count", "generation", "plen", "seq", "attempt", "crc")


def restamp(path: str, recno: int, record_size: int = R, **fields: object) -> None:
    """Rewrite fields of record `recno`'s header on disk and checksum it again: a record whole by
    its checksum whose content is wrong (another format, a stray write), not a torn one."""
    with open(path, "r+b") as f:
        f.seek(recno * record_size)
        buf = bytearray(f.read(record_size))
        values = dict(zip(_FIELDS, RECORD_HEADER.unpack_from(buf), strict=True))
        values.update(fields)
        RECORD_HEADER.pack_into(buf, 0, *values.values())
        buf[CRC_OFFSET : CRC_OFFSET + 4] = crc_of(buf).to_bytes(4, "little")
        f.seek(recno * record_size)
        f.write(buf)


# -- layout ------------------------------------------------------------------------------------


def test_every_record_the_writer_writes_starts_with_the_magic_hsbt(tmp_path: Path) -> None:
    """The format's magic is `HSBT` (docs/takeover-file.md §2) in the header, batch and ring
    records alike: it is what another version or tool recognises the file by."""
    path = make(tmp_path, 12)
    w, _ = setup_pair(path)
    w.batch_write(1, [SessionEntry("T1", {}, True)])
    w.append_group([SessionEntry("T1", {"a": 1}, False)])
    assert w.layout is not None
    with open(path, "rb") as f:
        data = f.read()
    for recno in (0, 1, w.layout.ring_record(1)):
        assert data[recno * R : recno * R + 4] == b"HSBT", recno
    w.close()


@settings(max_examples=200, deadline=None)
@given(record_size=st.integers(1, 64).map(lambda n: n * 512), entry_size=st.integers(1, 4000))
def test_e_entries_of_entry_size_bytes_fit_one_record_and_one_more_does_not(record_size: int, entry_size: int) -> None:
    """E counts the payload's array16 prefix (3 bytes) as well as the 32-byte record header: E
    encoded entries of the largest size and the prefix always fit one record, E + 1 never do."""
    e = entries_per_record(record_size, entry_size)
    fits = RECORD_HEADER_SIZE + 3 + e * entry_size
    assert fits <= record_size
    assert fits + entry_size > record_size
    if e:
        pack_record(KIND_RING, 1, 1, encode_payload([b"\xc0" * entry_size] * e), record_size, e)  # (it fits: no ValueError)


def test_a_negative_terminal_count_is_refused() -> None:
    """B of a negative terminal count is an error, not 0 batch records."""
    for bad in (-1, -2, -100):
        with pytest.raises(ValueError, match="terminal count must be >= 0"):
            batch_records_for(bad)


def test_the_largest_record_size_of_1_mib_is_accepted_and_one_step_more_is_not() -> None:
    """Record sizes run from 512 to 1 MiB inclusive, in steps of 512."""
    lay = size_check(4, 1, MAX_RECORD_SIZE)
    assert lay.record_size == MAX_RECORD_SIZE and lay.batch_records == 1
    with pytest.raises(ValueError, match="not a multiple of 512 between 512 and 1048576"):
        size_check(4, 1, MAX_RECORD_SIZE + 512)


def test_a_file_of_fewer_than_4_records_fails_the_size_check_even_for_no_terminals() -> None:
    """The smallest usable file has 4 records (header, one batch record, two ring slots), also
    for a host with no terminals (B = 0, 3·B + 1 = 1)."""
    for n in (1, 2, 3):
        with pytest.raises(TakeoverFileTooSmall, match="the smallest usable file has 4") as ei:
            size_check(n, 0, 4096)
        assert ei.value.needed == 4
    assert size_check(4, 0, 4096).ring_slots == 3


# -- records -----------------------------------------------------------------------------------


def test_an_empty_terminal_name_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """A terminal name is 1..48 bytes: an empty one is refused with a ValueError, by the batch
    write and by a ring group, before anything reaches the file."""
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        w.append_group([SessionEntry("T1", {}, True), SessionEntry("", {}, True)])
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        w.batch_write(2, [SessionEntry("", {}, True)])
    assert r.poll().status is PollStatus.NOTHING_NEW
    assert batch_read(path).entries == []
    w.close()
    r.close()


def test_a_ring_record_of_format_version_0_is_corrupt_not_applied(tmp_path: Path) -> None:
    """Only format version 1 is read: a checksummed ring record of this generation that says
    version 0 (no version this program knows) is corrupt, its entries never applied."""
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    w.append_group([SessionEntry("T1", {"a": 1}, True)])
    assert w.layout is not None
    restamp(path, w.layout.ring_record(1), version=0)
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and res.record == w.layout.ring_record(1) and not res.entries
    assert "format version 0" in res.reason and res.needs_resync
    w.close()
    r.close()


@pytest.mark.parametrize(
    ("field", "value", "reason"), [("kind", 0, "unknown record kind 0"), ("plen", R - RECORD_HEADER_SIZE + 1, "exceeds the record")]
)
def test_a_checksummed_record_of_kind_0_or_too_long_a_payload_is_corrupt_even_of_an_older_generation(
    tmp_path: Path, field: str, value: int, reason: str
) -> None:
    """Kind 0 is never written and a payload cannot run past its record: a checksummed record
    saying either is not an hsb record (corrupt), not taken for an earlier generation's leftover
    where the reader waits; and in the batch area the batch read names the record and why."""
    path = make(tmp_path, 12)
    w = TakeoverWriter(path, terminals=6)
    w.batch_write(1, [SessionEntry("T1", {}, True)])
    w.append_group([SessionEntry("T1", {"a": 1}, True)])
    w.batch_write(1, [SessionEntry("T1", {"a": 1}, True)])  # generation 2: ring record 1 is now a leftover
    snap = batch_read(path)
    r = RingReader(path, snap.header)
    assert r.poll().status is PollStatus.NOTHING_NEW  # (the leftover of generation 1)
    restamp(path, snap.layout.ring_record(1), **{field: value})
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and res.record == snap.layout.ring_record(1) and reason in res.reason
    restamp(path, 1, **{field: value})
    with pytest.raises(BatchReadError, match=reason) as ei:
        batch_read(path)
    assert ei.value.record == 1
    w.close()
    r.close()


def test_pack_record_refuses_a_payload_past_its_record_and_writes_into_a_used_buffer_exactly() -> None:
    """A payload fills at most R − 32 bytes (one byte more is a ValueError, never a record longer
    than R), and a record packed into a buffer that held something else is the same R bytes,
    its padding zeros, as one packed on its own: nothing of the old content is left behind."""
    pack_record(KIND_RING, 1, 1, bytes(R - RECORD_HEADER_SIZE), R)
    with pytest.raises(ValueError, match="does not fit"):
        pack_record(KIND_RING, 1, 1, bytes(R - RECORD_HEADER_SIZE + 1), R)
    payload = encode_payload([encode_entry(SessionEntry("T1", {"a": 1}, True))])
    alone = pack_record(KIND_RING, 5, 9, payload, R, 1, attempt=7)
    used = bytearray(b"\xff" * (3 * R))
    pack_record(KIND_RING, 5, 9, payload, R, 1, into=used, at=R, attempt=7)
    assert used[R : 2 * R] == alone and used[:R] == b"\xff" * R and used[2 * R :] == b"\xff" * R
    rec = parse_record(memoryview(used)[R : 2 * R])
    assert rec is not None and decode_payload(rec.payload, rec.n_entries) == [SessionEntry("T1", {"a": 1}, True)]


def test_a_header_whose_entries_per_record_disagree_with_its_record_size_is_refused(tmp_path: Path) -> None:
    """Record 0 says E = (R − 35) // entry size; a checksummed header saying another E (a writer
    of another layout) is refused by the batch read and is corrupt to a ring poll."""
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    w.close()
    with open(path, "r+b") as f:
        buf = bytearray(f.read(R))
        assert int.from_bytes(buf[42:44], "little") == 3
        buf[42:44] = (4).to_bytes(2, "little")  # E
        buf[CRC_OFFSET : CRC_OFFSET + 4] = crc_of(buf).to_bytes(4, "little")
        f.seek(0)
        f.write(buf)
    with pytest.raises(HeaderCorrupt, match="says 4 entries of 256 bytes per 1024-byte record"):
        batch_read(path)
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and res.record == 0 and "inconsistent" in res.reason
    r.close()


def test_a_batch_write_stamps_record_0_with_the_time_it_was_written(tmp_path: Path) -> None:
    """Record 0 says when the batch was written (ms since the epoch, UTC): `hsbctl file inspect`
    and the foreign-writer message show it. A header encoded without a time gets the current one."""
    path = make(tmp_path, 12)
    before = int(time.time() * 1000)
    with TakeoverWriter(path, terminals=6) as w:
        w.batch_write(1, [])
    after = int(time.time() * 1000)
    assert before <= batch_read(path).header.written_at_ms <= after
    rec = parse_record(memoryview(encode_header(Header(R, 12, 2, 3, 1, 0))))
    assert rec is not None and before <= decode_header(rec).written_at_ms <= int(time.time() * 1000)


def _forge(path: str, recno: int, kind: int, seq: int, entries: list[SessionEntry]) -> None:
    """Write record `recno` whole and checksummed, of the current batch write (its generation and
    attempt), holding `entries`: a record as no writer of this layout writes it."""
    h = batch_read(path).header
    payload = encode_payload([encode_entry(e) for e in entries])
    with open(path, "r+b") as f:
        f.seek(recno * R)
        f.write(pack_record(kind, h.generation, seq, payload, R, len(entries), attempt=h.attempt))


def test_a_record_holding_more_than_e_entries_is_refused_in_the_batch_area_and_corrupt_in_the_ring(tmp_path: Path) -> None:
    """E entries fill a record: one that says E + 1 (small ones, so they fit its bytes) is not
    written by this layout's writer. The batch read names that record; a ring poll says corrupt
    and applies none of them."""
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    assert w.layout is not None
    too_many = [SessionEntry(f"T{i}", {}, True) for i in range(E + 1)]
    _forge(path, w.layout.ring_record(1), KIND_RING, 1, too_many)
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and res.record == w.layout.ring_record(1) and not res.entries
    assert f"{E + 1} entries, at most {E} fit" in res.reason
    w.batch_write(1, [SessionEntry("T0", {}, True)])
    _forge(path, 1, KIND_BATCH, 1, too_many)
    with pytest.raises(BatchReadError, match=f"{E + 1} entries, at most {E} fit") as ei:
        batch_read(path)
    assert ei.value.record == 1
    w.close()
    r.close()


def test_a_record_that_stays_torn_is_warned_about_once_not_at_every_poll(tmp_path: Path) -> None:
    """`takeover_ring_torn` is logged once per problem (record and status), not at every poll
    that finds it again; a new problem after it is logged again."""
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    assert w.layout is not None
    w.append_group([SessionEntry("T1", {"a": 1}, True)])
    rec1 = w.layout.ring_record(1)
    with open(path, "r+b") as f:
        f.seek(rec1 * R + 40)
        f.write(b"\xee")
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            assert r.poll().status is PollStatus.TORN
        restamp(path, rec1, version=0)
        for _ in range(2):
            assert r.poll().status is PollStatus.CORRUPT
    assert [e["event"] for e in logs] == ["takeover_ring_torn", "takeover_ring_corrupt"]
    w.close()
    r.close()


def test_a_header_gone_back_to_an_earlier_generation_is_a_new_generation(tmp_path: Path) -> None:
    """Any other generation in record 0 than the cursor's, an earlier one too (a file restored
    from a copy), stops the ring: the standby reads the batch again, it does not go on reading
    records that header does not describe."""
    path = make(tmp_path, 12)
    w, first = setup_pair(path)
    first.close()
    w.batch_write(1, [])  # generation 2
    r = RingReader(path, batch_read(path).header)
    w.append_group([SessionEntry("T1", {"a": 1}, True)])
    restamp(path, 0, generation=r.generation - 1)  # (the same attempt: only the generation says it)
    res = r.poll()
    assert res.status is PollStatus.NEW_GENERATION and res.record == 0 and res.generation == r.generation - 1
    assert not res.entries and res.needs_resync
    w.close()
    r.close()


def test_an_earlier_generations_ring_record_of_the_same_attempt_is_a_leftover_never_applied(tmp_path: Path) -> None:
    """A ring record of an earlier generation is a leftover (nothing new) whatever its attempt:
    a file an earlier version wrote has attempt 0 in every record, so the attempt alone cannot
    tell the generations apart. Its entries are never handed out; the new ring's are."""
    path = make(tmp_path, 12)
    w, first = setup_pair(path)
    first.close()
    w.append_group([SessionEntry("OLD", {"gen": 1}, True)])
    w.batch_write(1, [])  # generation 2
    h = batch_read(path).header
    r = RingReader(path, h)
    restamp(path, h.layout.ring_record(1), attempt=h.attempt)
    for _ in range(3):
        res = r.poll()
        assert res.status is PollStatus.NOTHING_NEW and not res.entries
    new = [SessionEntry("NEW", {"gen": 2}, False)]
    w.append_group(new)
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == new
    w.close()
    r.close()


def test_a_misplaced_record_further_on_is_no_proof_that_the_awaited_one_was_written_over(tmp_path: Path) -> None:
    """While the reader waits at a leftover, a record further on proves the awaited one was
    written over only if it holds the seq that belongs there (s + d): a record of this batch write
    in the wrong place says nothing about the awaited one (its own poll will find it corrupt),
    so the reader goes on waiting, nothing new, and takes the awaited record once it is written."""
    path = make(tmp_path, 12)
    w, first = setup_pair(path)
    first.close()
    for i in range(3):
        w.append_group([SessionEntry(f"OLD{i}", {}, True)])
    w.batch_write(1, [])  # generation 2: ring records 1..3 are leftovers of generation 1
    h = batch_read(path).header
    r = RingReader(path, h)
    _forge(path, h.layout.ring_record(2), KIND_RING, 3, [SessionEntry("MISPLACED", {}, True)])
    for _ in range(4):
        res = r.poll()
        assert res.status is PollStatus.NOTHING_NEW and not res.entries, res
    new = [SessionEntry("NEW", {}, False)]
    w.append_group(new)
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == new
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and res.record == h.layout.ring_record(2)
    w.close()
    r.close()


def test_after_new_records_the_look_past_a_leftover_starts_again_at_the_next_slot(tmp_path: Path) -> None:
    """The look past a stale awaited record starts at distance 1 at every new wait: a reader that
    waited (and looked further and further on) before new records came finds a late write over
    the next awaited record at its first poll, torn, not only when the distances come round."""
    path = make(tmp_path, 12)
    w, first = setup_pair(path)
    first.close()
    for i in range(5):
        w.append_group([SessionEntry(f"OLD{i}", {}, True)])
    w.batch_write(1, [])  # generation 2: ring records of seq 1..5 are leftovers of generation 1
    h = batch_read(path).header
    lay = h.layout
    with open(path, "rb") as f:
        f.seek(lay.ring_record(2) * R)
        leftover = f.read(R)
    r = RingReader(path, h)
    for _ in range(3):  # waiting at seq 1: looks 1, 2, 4 slots on
        assert r.poll().status is PollStatus.NOTHING_NEW
    a = [SessionEntry("A", {}, True)]
    w.append_group(a)
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == a
    w.append_group([SessionEntry("B", {}, True)])
    w.append_group([SessionEntry("C", {}, True)])
    with open(path, "r+b") as f:  # a late write of generation 1 lands over seq 2, unread
        f.seek(lay.ring_record(2) * R)
        f.write(leftover)
    res = r.poll()
    assert res.status is PollStatus.TORN and res.record == lay.ring_record(2) and "already holds seq 3" in res.reason
    w.close()
    r.close()
