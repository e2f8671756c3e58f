"""Batch write / batch read (113), file-level checks, and crash ordering."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    BatchReadError,
    RingReader,
    SessionEntry,
    StartupIdMismatch,
    TakeoverFileError,
    TakeoverFileTooSmall,
    TakeoverWriter,
    batch_read,
    batch_records_for,
    check_file,
    create_file,
    entries_per_record,
)
from hsb.takeover.errors import (
    BadMagic,
    FileMissing,
    FileTruncated,
    HeaderCorrupt,
    NotRegularFile,
    RecordCountMismatch,
    RecordSizeMismatch,
    UnsupportedVersion,
)
from hsb.takeover.inspect import inspect_file
from hsb.takeover.layout import KIND_BATCH, KIND_RING, size_check
from hsb.takeover.records import encode_entry, encode_payload, pack_record


def make(tmp_path: Path, records: int, record_size: int = 4096, name: str = "takeover.dat") -> str:
    path = str(tmp_path / name)
    create_file(path, records, record_size, host="test")
    return path


def entries(n: int, prefix: str = "T") -> list[SessionEntry]:
    return [SessionEntry(f"{prefix}{i:06d}", {"proto": "lu2", "page": 932, "i": i}, i % 3 != 0) for i in range(n)]


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("record_size", [512, 4096])
@pytest.mark.parametrize("which", ["0", "1", "E", "E+1"])
def test_batch_round_trip(tmp_path: Path, record_size: int, which: str) -> None:
    e = entries_per_record(record_size)
    count = {"0": 0, "1": 1, "E": e, "E+1": e + 1}[which]
    b = batch_records_for(count, record_size)
    path = make(tmp_path, max(4, 3 * b + 1), record_size)
    with TakeoverWriter(path, terminals=count, host_name="host-a") as w:
        h = w.batch_write(0xABCDEF, entries(count))
    assert (h.batch_records, h.batch_entries, h.generation) == (b, count, 1)
    snap = batch_read(path, record_size=record_size, expected_startup_id=0xABCDEF)
    assert snap.entries == entries(count)
    assert snap.header.batch_records == b and snap.header.writer_host == "host-a"


def test_batch_round_trip_100k(tmp_path: Path) -> None:
    n = 100_000
    b = batch_records_for(n)
    path = make(tmp_path, 3 * b + 1)
    data = entries(n)
    with TakeoverWriter(path, terminals=n) as w:
        w.batch_write(1, data)
    snap = batch_read(path)
    assert snap.header.batch_records == b == 6667
    assert snap.entries == data


@pytest.mark.parametrize(("writer_terms", "reader_terms"), [(1000, 10), (10, 1000), (45, 0)])
def test_reader_takes_b_from_the_header(tmp_path: Path, writer_terms: int, reader_terms: int) -> None:
    """Claim 3: the two hosts define different terminal counts; the reader uses the writer's B."""
    n = 3 * batch_records_for(max(writer_terms, reader_terms)) + 1
    path = make(tmp_path, n)
    size_check(n, reader_terms, path=path)  # the reader's own check passes with its own count
    linked = entries(min(writer_terms, 40))
    with TakeoverWriter(path, terminals=writer_terms) as w:
        h = w.batch_write(7, linked)
    assert h.batch_records == batch_records_for(writer_terms)
    assert h.batch_records != batch_records_for(reader_terms)
    snap = batch_read(path)
    assert snap.entries == linked
    assert snap.layout.batch_records == batch_records_for(writer_terms)
    assert snap.layout.ring_first == batch_records_for(writer_terms) + 1


def test_writer_refuses_at_open_when_too_small(tmp_path: Path) -> None:
    path = make(tmp_path, 21)
    with pytest.raises(TakeoverFileTooSmall, match="has 21 records; 100 terminals need B=7 .* at least 22"):
        TakeoverWriter(path, terminals=100)
    TakeoverWriter(path, terminals=90).close()  # B=6: 19 records are enough


def test_batch_larger_than_own_b_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path, 10)
    with TakeoverWriter(path, terminals=15) as w, pytest.raises(ValueError, match="do not fit B=1"):
        w.batch_write(1, entries(16))


def test_generation_grows_across_batches_and_writer_restarts(tmp_path: Path) -> None:
    path = make(tmp_path, 10)
    with TakeoverWriter(path, terminals=15) as w:
        assert w.batch_write(1, entries(3)).generation == 1
        assert w.batch_write(2, entries(4)).generation == 2
    with TakeoverWriter(path, terminals=15) as w:
        assert w.generation == 2
        assert w.batch_write(3, entries(5)).generation == 3
    snap = batch_read(path)
    assert snap.header.generation == 3 and snap.entries == entries(5) and snap.header.startup_id == 3


def test_startup_id_mismatch(tmp_path: Path) -> None:
    path = make(tmp_path, 10)
    with TakeoverWriter(path, terminals=15) as w:
        w.batch_write(1111, entries(2))
    with pytest.raises(StartupIdMismatch, match="holds startup id 1111, not 2222 .* different takeover files"):
        batch_read(path, expected_startup_id=2222)


# -- a batch read never returns partial or corrupt data ------------------------


def _written(tmp_path: Path, n: int = 40) -> str:
    path = make(tmp_path, 10)
    with TakeoverWriter(path, terminals=45) as w:
        w.batch_write(5, entries(n))
    return path


def test_flipped_byte_in_a_batch_record(tmp_path: Path) -> None:
    path = _written(tmp_path)
    flip(path, 2 * 4096 + 100)
    with pytest.raises(BatchReadError) as ei:
        batch_read(path)
    assert ei.value.record == 2 and "checksum" in ei.value.reason


def test_crash_between_batch_records_and_header(tmp_path: Path) -> None:
    """The writer died after rewriting record 1 for generation 2, before the header."""
    path = _written(tmp_path)
    with fileio.RecordWriter(path, 4096) as io:
        payload = encode_payload([encode_entry(e) for e in entries(15, "X")])
        io.write(1, pack_record(KIND_BATCH, 2, 1, payload, 4096, 15))
    with pytest.raises(BatchReadError) as ei:
        batch_read(path)
    assert ei.value.record == 1 and "generation 2, header says 1" in ei.value.reason


def test_header_ahead_of_batch_records_is_refused(tmp_path: Path) -> None:
    """If record 0 were written first and the batch records then lost, the reader must not use them."""
    path = _written(tmp_path)
    h = check_file(path)
    from dataclasses import replace

    from hsb.takeover.records import encode_header

    with fileio.RecordWriter(path, 4096) as io:
        io.write(0, encode_header(replace(h, generation=h.generation + 1)))
    with pytest.raises(BatchReadError, match="record 1: generation 1, header says 2"):
        batch_read(path)


def test_never_written_batch_record(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with fileio.RecordWriter(path, 4096) as io:
        io.write(3, bytes(4096))
    with pytest.raises(BatchReadError, match="record 3: never written"):
        batch_read(path)


def test_entry_count_mismatch_with_header(tmp_path: Path) -> None:
    path = _written(tmp_path, 40)
    a = check_file(path).attempt
    with fileio.RecordWriter(path, 4096) as io:  # record 3 now holds 5 entries instead of 10
        io.write(3, pack_record(KIND_BATCH, 1, 3, encode_payload([encode_entry(e) for e in entries(5)]), 4096, 5, attempt=a))
    with pytest.raises(BatchReadError, match="record 0: header says 40 batch entries, the batch area holds 35"):
        batch_read(path)


def test_corrupted_read_via_fault_hook(tmp_path: Path) -> None:
    from hsb.takeover import Faults

    path = _written(tmp_path)
    with pytest.raises(BatchReadError, match="record 1: checksum"):
        batch_read(path, faults=Faults(corrupt_reads=1))
    assert len(batch_read(path, faults=Faults()).entries) == 40


# -- file-level checks ----------------------------------------------------------


def test_file_checks(tmp_path: Path) -> None:
    with pytest.raises(FileMissing, match="does not exist; create it with `hsbctl file create"):
        check_file(str(tmp_path / "nope"))
    with pytest.raises(NotRegularFile, match="is a directory"):
        check_file(str(tmp_path))
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(BadMagic, match="not an hsb takeover file"):
        check_file(str(junk))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(BadMagic):
        check_file(str(empty))
    path = make(tmp_path, 50)
    with pytest.raises(RecordSizeMismatch, match="50 records of 4096 bytes but the config says record_size = 8192"):
        check_file(path, 8192)
    with pytest.raises(RecordCountMismatch, match="50 records of 4096 bytes but the config says records = 60"):
        check_file(path, 4096, 60)
    assert check_file(path, 4096, 50).records == 50
    os.truncate(path, 40 * 4096)
    with pytest.raises(FileTruncated, match="header says 50 records"):
        check_file(path)
    os.truncate(path, 1024)  # not even its header record: truncated, not a torn header to rewrite
    with pytest.raises(FileTruncated, match="1024 bytes, shorter than its 4096-byte header record"):
        check_file(path)
    os.truncate(path, 100)
    with pytest.raises(FileTruncated):
        check_file(path)
    for exc in (FileMissing, NotRegularFile, BadMagic, FileTruncated, RecordSizeMismatch):
        assert issubclass(exc, TakeoverFileError)


def test_corrupt_header_is_refused_by_readers_and_recovered_by_the_writer(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with TakeoverWriter(path, terminals=45) as w:
        w.batch_write(6, entries(3))  # generation 2
    flip(path, 300)
    with pytest.raises(HeaderCorrupt, match="record 0 .* checksum"):
        batch_read(path)
    with pytest.raises(HeaderCorrupt):
        TakeoverWriter(path, terminals=45)  # without the config's record size there is nothing to trust
    with TakeoverWriter(path, terminals=45, record_size=4096) as w:
        assert w.generation == 2  # from the batch records
        assert w.batch_write(7, entries(4)).generation == 3
    assert batch_read(path).entries == entries(4)


def test_create_file(tmp_path: Path) -> None:
    path = make(tmp_path, 8, 512)
    assert os.path.getsize(path) == 8 * 512
    h = check_file(path)
    assert (h.records, h.record_size, h.batch_records, h.generation, h.startup_id) == (8, 512, 0, 0, 0)
    with pytest.raises(TakeoverFileError, match="already exists; add --force"):
        create_file(path, 8, 512)
    create_file(path, 9, 512, force=True)
    assert check_file(path).records == 9
    with pytest.raises(TakeoverFileError, match="needs 4"):
        create_file(str(tmp_path / "x"), 3, 512)
    with pytest.raises(TakeoverFileError, match="multiple of 512"):
        create_file(str(tmp_path / "x"), 10, 700)
    with pytest.raises(FileMissing, match="directory .* does not exist"):
        create_file(str(tmp_path / "no" / "x"), 10, 512)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


async def test_a_torn_header_does_not_stop_a_host_from_starting(tmp_path: Path) -> None:
    """The active lost power while it rewrote record 0 (a batch write). Each host's start check
    (TakeoverStore.check) goes by its config's geometry and the file's size instead of refusing;
    the active's next batch write rewrites the header and the standby reads it. A file too small
    for the config is still refused."""
    from hsb.takeover import TakeoverStore

    path = _written(tmp_path)
    flip(path, 300)
    with pytest.raises(HeaderCorrupt):
        check_file(path)
    store = TakeoverStore(path, terminals=45, record_size=4096, records=10, host_name="a", timeout=10)
    try:
        assert (await store.check()).batch_records == 3
        assert (await store.batch_write(9, entries(5))).generation == 2
        assert batch_read(path, expected_startup_id=9).entries == entries(5)
    finally:
        await store.close()
    flip(path, 300)
    small = TakeoverStore(path, terminals=45, record_size=4096, records=11, host_name="b", timeout=10)
    try:
        with pytest.raises(HeaderCorrupt):
            await small.check()  # the config says 11 records: the file has room for 10
    finally:
        await small.close()


def test_a_writer_writes_the_file_recreated_under_it(tmp_path: Path) -> None:
    """`hsbctl file create --force` renames a new file into place while the active runs: its
    next batch write goes into the new file (the standby reads it), not the old one, unlinked."""
    path = make(tmp_path, 10)
    with TakeoverWriter(path, terminals=45, record_size=4096, records=10) as w:
        w.batch_write(5, entries(3))
        create_file(path, 10, 4096, host="test", force=True, replace_used=True)
        assert w.batch_write(6, entries(4)).generation == 2
        assert batch_read(path, expected_startup_id=6).entries == entries(4)
        first, last = w.append_group(entries(2))
        reader = RingReader(path, batch_read(path).header)
        got = reader.poll()
        assert got.entries == entries(2) and (first, last) == (1, 1)
        reader.close()
        create_file(path, 12, 4096, host="test", force=True, replace_used=True)  # another geometry than the config's
        with pytest.raises(TakeoverFileError, match="12 records"):
            w.batch_write(7, entries(1))


def test_create_file_goes_on_after_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pwrite that writes less than asked (NFS, a signal) does not leave a file with holes of
    garbage: creation goes on where each write stopped."""
    real = os.pwrite

    def short(fd: int, data: Any, off: int) -> int:
        return real(fd, bytes(data[:1000]), off)

    monkeypatch.setattr(os, "pwrite", short)
    path = make(tmp_path, 10)
    monkeypatch.undo()
    assert check_file(path).records == 10 and os.path.getsize(path) == 10 * 4096
    with TakeoverWriter(path, terminals=45) as w:
        w.batch_write(5, entries(3))
    assert batch_read(path).entries == entries(3)


def test_a_torn_header_of_a_file_larger_than_configured_is_rewritten_with_the_configs_count(tmp_path: Path) -> None:
    """Recovering from a torn record 0 took the record count from the file's size, and a file
    larger than the config says won: the next batch wrote that count into the header, and both
    hosts' next start failed with RecordCountMismatch, naming a count nobody configured."""
    path = _written(tmp_path)
    with open(path, "ab") as f:  # two records more than the config's 10
        f.write(bytes(2 * 4096))
    flip(path, 300)
    with TakeoverWriter(path, terminals=45, record_size=4096, records=10) as w:
        assert w.records == 10
        w.batch_write(9, entries(5))
    assert check_file(path, 4096, 10).records == 10


def test_a_torn_header_of_a_file_shorter_than_configured_is_not_rewritten(tmp_path: Path) -> None:
    """A torn record 0 in a file shorter than the config's records (truncated, or another file):
    the writer refuses it rather than write the config's count into its header and ring records
    past its end (the other host then finds it truncated, or reads what is not there)."""
    path = _written(tmp_path)
    os.truncate(path, 8 * 4096)  # the config says 10
    flip(path, 300)
    with pytest.raises(HeaderCorrupt):
        TakeoverWriter(path, terminals=45, record_size=4096, records=10)
    assert os.path.getsize(path) == 8 * 4096


def test_a_generation_burned_by_a_failed_batch_is_never_mixed_with_its_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch write of 10 records at generation 2 fails at the header: the burn is the failed
    writer's only, and a new writer (a restart, the other host) going by the header (generation
    1) writes generation 2 again. Its batch is another attempt: the failed one's records left in
    the ring are stale to the standby (they read as "a batch record of this generation in the
    ring", corrupt), and one of them landing late over the new batch (an NFS writeback of a
    fenced host) makes the batch read refuse instead of mixing two writers' entries."""
    path = make(tmp_path, 40, 512)  # E = 1: one entry per record
    with TakeoverWriter(path, terminals=10) as w:
        w.batch_write(1, entries(10, "OLD"))
        real = fileio.RecordWriter.write

        def header_fails(self: fileio.RecordWriter, first_record: int, data: Any) -> None:
            if first_record == 0:
                raise OSError(5, "Input/output error")
            real(self, first_record, data)

        monkeypatch.setattr(fileio.RecordWriter, "write", header_fails)
        with pytest.raises(OSError):
            w.batch_write(2, entries(10, "OLD"))
        monkeypatch.undo()
    assert w.generation == 2 and check_file(path).generation == 1
    with open(path, "rb") as fh:
        fh.seek(512)
        late = fh.read(512)  # record 1 of the failed try

    with TakeoverWriter(path, terminals=4) as w2:
        h = w2.batch_write(3, entries(4, "N"))
    assert h.generation == 2 and h.batch_records == 4  # the generation again
    snap = batch_read(path, expected_startup_id=3)
    assert snap.entries == entries(4, "N")
    ring = RingReader(path, snap.header)
    try:  # records 5..10 still hold the failed try's batch records: left over, not damage
        assert ring.poll().status.value == "nothing_new"
    finally:
        ring.close()

    with fileio.RecordWriter(path, 512) as io:
        io.write(1, late)
    with pytest.raises(BatchReadError) as ei:
        batch_read(path)
    assert ei.value.record == 1 and "another batch write of generation 2" in ei.value.reason
    errors = inspect_file(path)["errors"]
    assert [e["record"] for e in errors] == [1] and "attempt" in errors[0]["reason"]
    assert (h.generation, h.attempt) != (w.generation, w.attempt)  # not the same batch write


def test_a_batch_record_written_in_the_wrong_place_is_refused(tmp_path: Path) -> None:
    """Record 1 of this very batch write (generation, attempt, checksum all good) found at record
    2 too, a misdirected write: its entries would be applied twice and record 2's never."""
    path = _written(tmp_path, 40)
    with open(path, "r+b") as f:
        f.seek(4096)
        one = f.read(4096)
        f.seek(2 * 4096)
        f.write(one)
    with pytest.raises(BatchReadError, match="record 2: says it is record 1"):
        batch_read(path)


def test_a_ring_record_of_this_batch_write_in_the_batch_area_is_refused(tmp_path: Path) -> None:
    """A ring record of this generation and attempt, numbered as the batch record it lies at (a
    misdirected ring write): not taken for batch entries."""
    path = _written(tmp_path, 40)
    h = check_file(path)
    with fileio.RecordWriter(path, 4096) as io:
        io.write(3, pack_record(KIND_RING, h.generation, 3, encode_payload([encode_entry(e) for e in entries(15, "X")]), 4096, 15, attempt=h.attempt))
    with pytest.raises(BatchReadError, match="record 3: holds a ring record, expected batch"):
        batch_read(path)


def test_a_file_of_another_format_version_is_refused_as_such_not_as_a_torn_header(tmp_path: Path) -> None:
    """A file a newer hsb made (format version 2): said so, not taken for a torn header, which
    the active's writer would recover by writing its own header over that hsb's file."""
    path = make(tmp_path, 10)
    with open(path, "r+b") as f:
        f.seek(5)  # (magic, kind, version)
        f.write(bytes([2]))
    with pytest.raises(UnsupportedVersion, match="format version 2; this hsb reads version 1"):
        check_file(path)
    with pytest.raises(UnsupportedVersion):
        TakeoverWriter(path, terminals=15, record_size=4096, records=10)
