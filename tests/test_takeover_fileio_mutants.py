"""The takeover file's access and checks (hsb/takeover/fileio.py), each test naming a behaviour
that a mutation audit found no test for: a read session's whole records only and its end at the
file's end, O_DIRECT refused by a read (not the open) falling back once and remembered, an
EINVAL of a plain read raised, whole-record writes going on after a short write, a writer's
descriptor closed once; check_file's words for a file cut at a record, a header's record size
at its bounds, the recreate hint for the smallest file, a torn header with no config's count
refused; the generation scan over the first `records` only; create_file's syncs, its free space
as df says it (none said: not checked), the signals it leaves to others, a second signal while
the first unwinds, and a torn header found at the file's own record size refusing a --force at
another one.

The audit (session 64): 42 hand-made mutants of fileio.py; 14 were killed by the takeover tests
(test_takeover_*.py, test_ctl_file.py, test_ctl_errors.py, test_config_takeover_size.py,
test_sandbox_safety.py), none of the 28 left by nine more (test_rejoin, test_takeover_pair,
test_host_stale_header, ...); 23 are killed here; 5 are equivalent or no behaviour: the fault hook
called on an empty read (it has no record to corrupt), a header record that parses as never
written after its magic was read (the same bytes), the header's two record sizes compared (the
bytes check_file reads are the payload's own field), the scan's `>` for `>=` (the record it
names is any that holds the highest generation), and create_file's zeros written a record at a
time instead of 1 MiB (slower, the same file).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hsb.takeover import SessionEntry, TakeoverWriter, fileio
from hsb.takeover.errors import CreateInterrupted, FileTruncated, HeaderCorrupt, NoSpace, TakeoverFileError
from hsb.takeover.fileio import FreshReader, RecordWriter, check_file, create_file, scan_generation, torn_header_taken

pytestmark = pytest.mark.timeout(30)

R = 4096


def _file(tmp_path: Path, records: int = 8, record_size: int = R, name: str = "tk") -> str:
    path = str(tmp_path / name)
    create_file(path, records, record_size, host="h")
    return path


def _written(tmp_path: Path) -> str:
    """A file of 40 records a pair has written (a batch: generation 1)."""
    path = _file(tmp_path, 40)
    with TakeoverWriter(path, terminals=100, host_name="host-a") as w:
        w.batch_write(777, [SessionEntry(f"T{i:03d}", {"p": i}, True) for i in range(30)])
    return path


# -- reads ------------------------------------------------------------------


def test_a_read_past_the_end_gives_the_whole_records_there_are(tmp_path: Path) -> None:
    """A file that ends early (or mid-record): the read stops at its end, with the whole records
    only (mutants: the end's 0 not taken as the end, which read for ever; the part-record kept)."""
    path = _file(tmp_path, 4)
    with open(path, "ab") as f:
        f.write(b"x" * 1000)  # a part of a fifth record
    with FreshReader(path, R) as f:
        assert len(f.read(2, 5)) == 2 * R
        assert len(f.read(4, 1)) == 0


def test_an_einval_of_a_plain_read_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from a descriptor opened without O_DIRECT is no alignment to fall back from: it is
    the caller's error, not a read begun again for ever (mutant: the `not self.direct` dropped)."""
    path = _file(tmp_path, 4)
    calls = []

    def preadv(fd: int, bufs: Any, offset: int) -> int:
        calls.append(fd)
        assert len(calls) < 5, "the read was begun again and again"
        raise OSError(errno.EINVAL, "invalid")

    monkeypatch.setattr(fileio, "_no_direct", {path})  # (its filesystem refused O_DIRECT before)
    monkeypatch.setattr(os, "preadv", preadv)
    with FreshReader(path, R) as f, pytest.raises(OSError) as ei:
        f.read(0, 1)
    assert ei.value.errno == errno.EINVAL and len(calls) == 1


class DirectSeen:
    """os.open and os.preadv as a device would have them that takes O_DIRECT at the open but
    refuses its reads (EINVAL: it wants a larger alignment than our records)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opens: list[bool] = []  # each open: with O_DIRECT?
        self.real_open, self.real_preadv = os.open, os.preadv
        monkeypatch.setattr(os, "open", self.open)
        monkeypatch.setattr(os, "preadv", self.preadv)

    def open(self, path: Any, flags: int, *a: Any, **kw: Any) -> int:
        self.opens.append(bool(flags & os.O_DIRECT))
        return self.real_open(path, flags, *a, **kw)

    def preadv(self, fd: int, bufs: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "invalid")
        return self.real_preadv(fd, bufs, offset)


def test_o_direct_refused_by_a_read_falls_back_once_and_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read is taken through the cache, and later sessions open the file so at once (mutants:
    the path not remembered, or not looked up at the open: the same refused read for ever)."""
    path = _file(tmp_path, 4)
    expect = Path(path).read_bytes()[:R]
    monkeypatch.setattr(fileio, "_no_direct", set())
    seen = DirectSeen(monkeypatch)
    with FreshReader(path, R) as f:
        assert bytes(f.read(0, 1)) == expect and not f.direct
    assert seen.opens == [True, False] and path in fileio._no_direct
    with FreshReader(path, R) as f:
        assert bytes(f.read(0, 1)) == expect
    assert seen.opens == [True, False, False]


def test_o_direct_refused_at_the_open_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses O_DIRECT at the open (tmpfs, some FUSE mounts) is asked once
    (mutant: not remembered, every read session's open refused first)."""
    path = _file(tmp_path, 4)
    monkeypatch.setattr(fileio, "_no_direct", set())
    opens: list[bool] = []
    real = os.open

    def refusing(p: Any, flags: int, *a: Any, **kw: Any) -> int:
        opens.append(bool(flags & os.O_DIRECT))
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "invalid")
        return real(p, flags, *a, **kw)

    monkeypatch.setattr(os, "open", refusing)
    for _ in range(3):
        with FreshReader(path, R) as f:
            assert len(f.read(0, 1)) == R
    assert opens == [True, False, False, False]


# -- writes -----------------------------------------------------------------


def test_only_whole_records_are_written(tmp_path: Path) -> None:
    """A part of a record is refused, not written (mutant: the check dropped)."""
    path = _file(tmp_path, 4)
    before = Path(path).read_bytes()
    with RecordWriter(path, R) as w, pytest.raises(ValueError, match="whole records"):
        w.write(1, b"x" * 100)
    assert Path(path).read_bytes() == before


def test_a_short_write_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwrite may write less than asked (NFS, a signal): the rest goes at the offset after it
    (mutant: at the first record's offset again)."""
    path = _file(tmp_path, 4)
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real(fd, bytes(data)[:1000], off))
    data = bytes(range(256)) * (2 * R // 256)
    with RecordWriter(path, R) as w:
        w.write(1, data)
    assert Path(path).read_bytes()[R : 3 * R] == data


def test_a_writers_descriptor_is_closed_once(tmp_path: Path) -> None:
    """close() twice (its `with` and a caller's) closes nothing of anyone else's that took the
    descriptor's number meanwhile (mutant: the number kept after the close)."""
    path = _file(tmp_path, 4)
    w = RecordWriter(path, R)
    w.close()
    other = os.open(path, os.O_RDONLY)
    try:
        w.close()
        os.fstat(other)  # (EBADF had the second close taken it)
    finally:
        os.close(other)


# -- check_file -------------------------------------------------------------


def _cut(path: str, size: int) -> None:
    os.truncate(path, size)


def test_a_file_cut_at_a_record_is_said_against_its_header(tmp_path: Path) -> None:
    """Cut to its header record exactly, or to the smallest record: what the header says the
    file should be (mutants: `<=` for `<` in the size checks, which said it shorter than a
    header record it holds in full)."""
    path = _file(tmp_path, 8)
    _cut(path, R)
    with pytest.raises(FileTruncated, match=r"its header says 8 records of 4096 bytes \(32768 bytes\)"):
        check_file(path)
    _cut(path, 512)
    with pytest.raises(FileTruncated, match="shorter than its 4096-byte header record"):
        check_file(path)


def test_a_header_record_size_at_its_bounds(tmp_path: Path) -> None:
    """The largest record size, 1 MiB, is a sane one; one that is no multiple of 512 is said
    as a corrupt header naming it (mutants: `<` for `<=` at the top; the alignment dropped)."""
    big = _file(tmp_path, 4, 1 << 20, "big")
    assert check_file(big).record_size == 1 << 20
    path = _file(tmp_path, 8)
    with open(path, "r+b") as f:
        f.seek(32)
        f.write((1000).to_bytes(4, "little"))
    with pytest.raises(HeaderCorrupt, match=r"\(record size 1000\)"):
        check_file(path)


def test_the_smallest_files_recreate_hint_names_its_count(tmp_path: Path) -> None:
    """A file of the fewest records (4) is told to be recreated with `--records 4`, not the
    placeholder N (mutant: `<=` for `<` against MIN_RECORDS)."""
    path = _file(tmp_path, 4)
    with open(path, "r+b") as f:
        f.seek(6)
        f.write((99).to_bytes(1, "little"))  # (the record's format version)
    with pytest.raises(TakeoverFileError, match=r"--records 4 --record-size 4096 --force`"):
        check_file(path)


def test_a_torn_header_with_no_configs_count_is_not_taken(tmp_path: Path) -> None:
    """Without the config's `records` there is nothing to go by: not taken as torn (mutant: the
    `records is not None` dropped, any size then enough)."""
    path = _file(tmp_path, 8)
    assert torn_header_taken(path, 8, R) and not torn_header_taken(path, 9, R)
    assert not torn_header_taken(path, None, R)


def test_the_generation_scan_reads_the_first_records_only(tmp_path: Path) -> None:
    """Over the first `records`: a generation in a record past them is not the file's (mutant:
    whole reads of up to 1 MiB, past the count)."""
    path = _written(tmp_path)
    assert scan_generation(path, R, 40)[0] == 1
    with open(path, "r+b") as f:  # the file's records copied past the count the caller says
        f.seek(0)
        head = f.read(8 * R)
    small = str(tmp_path / "small")
    Path(small).write_bytes(bytes(8 * R) + head)
    assert scan_generation(small, R, 8) == (0, 0)
    assert scan_generation(small, R, 16)[0] == 1


# -- create_file ------------------------------------------------------------


def test_create_syncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's data and the rename into its name are durable before create returns (mutants:
    the fsync or the folder's sync dropped)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(fileio, "fsync_dir", lambda d: synced.append(f"dir:{d}"))
    path = str(tmp_path / "tk")
    create_file(path, 4, R)
    assert [s.split(".tmp-")[0] for s in synced] == [path, f"dir:{tmp_path}"]


def _statvfs(blocks: int, bfree: int, bavail: int) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, blocks, bfree, bavail, 1000, 1000, 1000, 0, 255))


def test_free_space_is_what_any_user_may_use_and_none_said_is_not_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free blocks for any user (df's Avail, not counting root's reserve); a filesystem that
    reports no size (some FUSE ones: 0 blocks) is not held to it; a size too small for even the
    fewest records names no count that fits (mutants: f_bfree; the 0 blocks taken as no room;
    `at most N fit` said for N below the fewest)."""
    monkeypatch.setattr(os, "statvfs", lambda _p: _statvfs(1_000_000, 1000, 3))
    with pytest.raises(NoSpace, match="12.0 KiB free; free space there, or choose fewer --records or a path"):
        create_file(str(tmp_path / "a"), 40, R)
    monkeypatch.setattr(os, "statvfs", lambda _p: _statvfs(0, 0, 0))
    create_file(str(tmp_path / "b"), 4, R)
    assert os.path.getsize(tmp_path / "b") == 4 * R


def test_signals_another_handler_has_are_left_to_it(tmp_path: Path) -> None:
    """Only a signal Python left as it starts is taken over while the file is written; one a
    daemon or a caller set up keeps its handler (mutant: every one replaced)."""
    got: list[int] = []

    def mine(signum: int, _frame: Any) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGHUP, mine)
    try:
        with fileio._signals_raise("p", "p.tmp"):
            assert signal.getsignal(signal.SIGHUP) is mine
            signal.raise_signal(signal.SIGHUP)
        assert got == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_second_signal_while_the_first_unwinds_is_not_raised_again(tmp_path: Path) -> None:
    """A second SIGTERM while the first one's CreateInterrupted unwinds (the temporary file being
    removed) raises nothing more there: the first is the one said (mutant: raised again)."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    seen: list[str] = []
    try:
        with fileio._signals_raise("p", "p.tmp"):
            try:
                signal.raise_signal(signal.SIGTERM)
            except CreateInterrupted:
                seen.append("first")
                signal.raise_signal(signal.SIGTERM)  # (in the unwinding: nothing raised)
                seen.append("unwound")
    except CreateInterrupted:
        seen.append("raised again")
    assert seen == ["first", "unwound"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_torn_header_at_the_files_record_size_refuses_a_force_at_another(tmp_path: Path) -> None:
    """A torn header whose record size is still readable: the records are scanned at it and
    their generation refuses a --force asking another record size (mutant: the scan went on to
    the size asked, found nothing at it, and the pair's file was replaced)."""
    path = _written(tmp_path)
    with open(path, "r+b") as f:  # a byte of record 0's padding: its checksum fails
        f.seek(300)
        b = f.read(1)
        f.seek(300)
        f.write(bytes([b[0] ^ 0xFF]))
    before = Path(path).read_bytes()
    with pytest.raises(TakeoverFileError, match="in use by a pair though its header is unreadable"):
        create_file(path, 40, 512, force=True)
    assert Path(path).read_bytes() == before
