"""File access under the NFS discipline of SPEC §4, and the file-level checks.

- Writes: whole records with `pwrite` at record-aligned offsets on a plain
  O_RDWR descriptor (no O_APPEND, no mmap, no locks), made durable with
  fdatasync (the file is pre-allocated and never changes size, so the data
  sync is a full sync for our purposes; on NFS it sends COMMIT).
- Reads: every read session opens the file afresh (NFS close-to-open
  consistency revalidates the client cache) with O_DIRECT when the filesystem
  takes it, into a page-aligned anonymous buffer; O_DIRECT is dropped silently
  where it is refused with EINVAL (tmpfs, some FUSE mounts). Nothing read is
  trusted before its checksum is verified (records.parse_record).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

import structlog

from hsb.fsutil import fsync_dir
from hsb.takeover.errors import (
    BadMagic,
    CreateInterrupted,
    FileMissing,
    FileTruncated,
    HeaderCorrupt,
    NoSpace,
    NotRegularFile,
    TakeoverFileError,
    UnsupportedVersion,
)
from hsb.takeover.faults import Faults
from hsb.takeover.layout import (
    DEFAULT_RECORD_SIZE,
    MAGIC,
    MAX_RECORD_SIZE,
    MAX_RECORDS,
    MIN_RECORD_SIZE,
    MIN_RECORDS,
    RECORD_ALIGN,
    RECORD_HEADER,
    VERSION,
    check_record_size,
    geometry_mismatch,
)
from hsb.takeover.records import BadRecord, Header, decode_header, encode_header, parse_record

log = structlog.get_logger("hsb.takeover")

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_no_direct: set[str] = set()  # paths whose filesystem refused O_DIRECT (fall back silently)

sync = os.fdatasync if hasattr(os, "fdatasync") else os.fsync


class AlignedBuffer:
    """A page-aligned read buffer (anonymous mmap, not a mapping of the file), grown on demand."""

    def __init__(self, size: int = 1 << 16) -> None:
        self._map = mmap.mmap(-1, _round_up(size, mmap.PAGESIZE))

    def view(self, size: int) -> memoryview:
        if size > len(self._map):
            self.close()
            self._map = mmap.mmap(-1, _round_up(size, mmap.PAGESIZE))
        return memoryview(self._map)[:size]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the map goes when it does
            pass


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class FreshReader:
    """One read session: opens the file anew, reads whole records, closes."""

    def __init__(self, path: str, record_size: int, buf: AlignedBuffer | None = None, faults: Faults | None = None) -> None:
        self.path = path
        self.record_size = record_size
        self._own_buf = buf is None
        self.buf = buf if buf is not None else AlignedBuffer(record_size)
        self.faults = faults
        self.fd = -1
        self.direct = False

    def __enter__(self) -> FreshReader:
        self.fd, self.direct = _open_read(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._own_buf:
            self.buf.close()

    def read(self, first_record: int, count: int) -> memoryview:
        """Records first_record..first_record+count-1; shorter if the file ends early.

        The view points into the shared buffer and is valid until the next read.
        """
        r = self.record_size
        view = self.buf.view(count * r)
        got = self._preadv(view, first_record * r)
        got -= got % r
        out = view[:got]
        if self.faults is not None and got:
            self.faults.after_read(first_record, out, r)
        return out

    def _preadv(self, view: memoryview, offset: int) -> int:
        total = 0
        while total < len(view):
            try:
                n = os.preadv(self.fd, [view[total:]], offset + total)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                # The device wants larger alignment than our records: read through the cache.
                _no_direct.add(self.path)
                os.close(self.fd)
                self.fd, self.direct = _open_read(self.path)
                continue
            if n == 0:
                break
            total += n
        return total


def _open_read(path: str) -> tuple[int, bool]:
    if _O_DIRECT and path not in _no_direct:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _no_direct.add(path)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


class RecordWriter:
    """The writer's descriptor: whole-record pwrites and syncs, nothing else."""

    def __init__(self, path: str, record_size: int) -> None:
        self.path = path
        self.record_size = record_size
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def write(self, first_record: int, data: bytes | bytearray | memoryview) -> None:
        if len(data) % self.record_size:
            raise ValueError("only whole records are written")
        view = memoryview(data)
        off = first_record * self.record_size
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], off + done)

    def sync(self) -> None:
        sync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def stat_regular(path: str, records: int | None = None, record_size: int | None = None) -> os.stat_result:
    """The file's stat; FileMissing or NotRegularFile, each naming the fix, if it is not one (the
    command that creates a missing file with the config's `records` and `record_size`, if known)."""
    return _stat_regular(path, records, record_size)


def _stat_regular(path: str, records: int | None = None, record_size: int | None = None) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        size = f" --record-size {record_size}" if record_size is not None else ""
        create = f"hsbctl file create {path} --records {records if records is not None else 'N'}{size}"
        raise FileMissing(f"takeover file {path} does not exist; create it with `{create}`") from None
    except NotADirectoryError:
        raise FileMissing(f"takeover file {path} does not exist (a parent is not a directory); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotRegularFile(f"takeover file {path} is {what}; point the path at a file made by `hsbctl file create`")
    return st


def check_file(path: str, record_size: int | None = None, records: int | None = None, terminals: int | None = None) -> Header:
    """Every file-level check, in order; returns the header or raises a TakeoverFileError.

    `record_size`/`records`: what the caller's config says; a mismatch with the
    header is an error naming both geometries and the fix, which with `terminals` (the
    host's) fits them (hsb.takeover.layout.geometry_mismatch).
    """
    path = os.fspath(path)
    st = _stat_regular(path, records, record_size)
    recreate = _recreate(path, st.st_size, record_size, records)
    # not a takeover file at all (the wrong path?): no hint to recreate it, which would destroy
    # whatever file this is; only an empty file has nothing to lose
    if st.st_size < MIN_RECORD_SIZE:
        if st.st_size == 0:
            raise BadMagic(f"{path} is not an hsb takeover file (0 bytes, no header); check the path or {recreate}")
        if not _starts_with_magic(path):
            raise BadMagic(f"{path} is not an hsb takeover file ({st.st_size} bytes, no header); check the path")
        raise FileTruncated(f"takeover file {path} is only {st.st_size} bytes, too short for its header record; {recreate}")
    with FreshReader(path, MIN_RECORD_SIZE) as f:
        first = bytes(f.read(0, 1))
        if first[:4] != MAGIC:
            raise BadMagic(f"{path} is not an hsb takeover file (bad magic {first[:4]!r} in record 0); check the path")
        _, _, version, *_ = RECORD_HEADER.unpack_from(first)
        if version != VERSION:
            raise UnsupportedVersion(f"takeover file {path} has format version {version}; this hsb reads version {VERSION}; {recreate}")
        rs = int.from_bytes(first[32:36], "little")
        if not _sane_record_size(rs):
            raise HeaderCorrupt(
                f"record 0 of takeover file {path} is corrupt (record size {rs}); {_torn_fix(path, st.st_size, record_size, records)}"
            )
        recreate = _recreate(path, st.st_size, record_size or rs, records)
        if st.st_size < rs:
            raise FileTruncated(f"takeover file {path} is {st.st_size} bytes, shorter than its {rs}-byte header record; {recreate}")
        f.record_size = rs
        try:
            rec = parse_record(f.read(0, 1))
            if rec is None:
                raise BadRecord("never written", torn=False)
            h = decode_header(rec)
        except (BadRecord, ValueError) as exc:
            fix = _torn_fix(path, st.st_size, record_size or rs, records)
            raise HeaderCorrupt(f"record 0 (header) of takeover file {path} is corrupt: {exc}; {fix}") from None
    if h.record_size != rs:
        fix = _torn_fix(path, st.st_size, record_size or rs, records)
        raise HeaderCorrupt(f"record 0 (header) of takeover file {path} is corrupt: record size fields disagree; {fix}")
    if st.st_size < h.records * h.record_size:
        raise FileTruncated(
            f"takeover file {path} is {st.st_size} bytes, but its header says {h.records} records of "
            f"{h.record_size} bytes ({h.records * h.record_size} bytes): it was truncated; recreate it with "
            f"`hsbctl file create {path} --records {h.records} --record-size {h.record_size} --force`"
        )
    mismatch = geometry_mismatch(path, h.records, h.record_size, records, record_size, terminals)
    if mismatch is not None:
        raise mismatch
    return h


def torn_header_taken(path: str, records: int | None, record_size: int) -> bool:
    """Whether check_file's HeaderCorrupt is taken as a header torn by a crash while it was
    rewritten (at a batch write), going by the config's `records` and `record_size`: when the
    file holds that many records. One rule for the start's size check (TakeoverStore.check), the
    active's writer (which rewrites it) and hsbd --check-config; a shorter file is refused, and
    so is a torn header with no config's records to go by (a tool's writer, given none, goes by
    the file's size). An OSError of the file's stat is the caller's."""
    return records is not None and os.stat(path).st_size >= records * record_size


def _sane_record_size(r: int) -> bool:
    return r % RECORD_ALIGN == 0 and MIN_RECORD_SIZE <= r <= MAX_RECORD_SIZE


def _recreate(path: str, size: int, record_size: int | None, records: int | None) -> str:
    """The command that recreates the file, with the count the config gives or the file's size at
    its record size: a count the configs do not say fails every batch write after it
    (RecordCountMismatch). A placeholder only where neither says (a file shorter than a record)."""
    n = records or (size // record_size if record_size else 0)
    if not record_size or n < MIN_RECORDS:
        return f"recreate it with `hsbctl file create {path} --records N --force` (N: [takeover] records in the hosts' configs)"
    return f"recreate it with `hsbctl file create {path} --records {n} --record-size {record_size} --force`"


def _torn_fix(path: str, size: int, record_size: int | None, records: int | None) -> str:
    """What to do about an unreadable header: normally a power loss while it was rewritten, which
    the pair's active mends (TakeoverWriter goes by the records), so not a file to replace."""
    return (
        "if a pair uses the file, its active rewrites the header at its next batch write (start it);"
        f" if none does, {_recreate(path, size, record_size, records)}"
    )


def scan_generation(path: str, record_size: int, records: int) -> tuple[int, int]:
    """(highest generation, a record holding it) over every checksummed record of the first
    `records`; (0, 0) when none holds one. Reads the whole file once."""
    best, where, r, per = 0, 0, record_size, max(1, (1 << 20) // record_size)
    with FreshReader(path, r) as f:
        for first in range(0, records, per):
            view = f.read(first, min(per, records - first))
            for i in range(len(view) // r):
                try:
                    rec = parse_record(view[i * r : (i + 1) * r])
                except BadRecord:
                    continue  # only checksummed generations count
                if rec is not None and rec.generation > best:
                    best, where = rec.generation, first + i
    return best, where


def _starts_with_magic(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == MAGIC


def _same_filesystem(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False  # (a folder that is not there: said as such below)


def create_file(path: str, records: int, record_size: int, *, force: bool = False, host: str | None = None, replace_used: bool = False) -> Header:
    """Pre-allocate N records of R bytes: a header (startup id 0, generation 0, B 0), zeros elsewhere.

    Zeros are written, not left as holes, so that later writes never allocate
    (and an NFS server has the space up front). The file and its directory are
    synced before returning.
    """
    # a link (to the shared storage, say) is followed: the file it names is the one replaced, not the link
    link = os.fspath(path)
    path = os.path.realpath(link) if os.path.islink(link) else link
    if path != link and not os.path.lexists(path) and not force and _same_filesystem(os.path.dirname(path), os.path.dirname(os.path.abspath(link))):
        # a link to other storage whose target's folder is on the link's own filesystem: that
        # storage is not mounted, the file would be made on this machine's disk under the mount
        # point, and the two hosts would each use a file of their own
        raise FileMissing(
            f"{link} is a link to {path}, which does not exist: is the shared storage mounted? mount it, or add --force to create the file there"
        )
    try:
        check_record_size(record_size)
    except ValueError as exc:
        raise TakeoverFileError(f"{exc}; choose e.g. --record-size 4096") from None
    if not MIN_RECORDS <= records <= MAX_RECORDS:
        raise TakeoverFileError(f"a takeover file needs {MIN_RECORDS}..{MAX_RECORDS} records, not {records}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileMissing(f"directory {parent} does not exist; create it first or choose another path for {path}")
    if os.path.lexists(path) and not force:
        raise TakeoverFileError(f"{path} already exists; add --force to overwrite it (its contents are lost)")
    if force and os.path.lexists(path) and not os.path.isfile(path):
        raise NotRegularFile(f"{path} exists and is not a regular file; remove it or choose another path")
    if force and not replace_used and os.path.isfile(path):
        _refuse_used(path, record_size)
    header = Header(
        record_size=record_size,
        records=records,
        batch_records=0,
        generation=0,
        startup_id=0,
        batch_entries=0,
        written_at_ms=int(time.time() * 1000),
        writer_host=host if host is not None else socket.gethostname(),
    )
    size = records * record_size
    free = _free_bytes(parent)
    if free is not None and size > free:
        raise NoSpace(
            f"{path} needs {_bytes_text(size)} ({records} records of {record_size} bytes) but {parent} has {_bytes_text(free)} free; {_room_fix(free, record_size)}"
        )
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = -1
    try:
        with _signals_raise(path, tmp):  # (a SIGTERM meanwhile: the temporary file is removed, not left behind)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)  # (terminal names and attributes: not for every user)
            head = memoryview(encode_header(header))
            done = 0
            while done < len(head):  # (a short write goes on where it stopped)
                done += os.pwrite(fd, head[done:], done)
            chunk = memoryview(bytes(min(1 << 20, (records - 1) * record_size) // record_size * record_size or record_size))
            off = record_size
            while off < size:
                off += os.pwrite(fd, chunk[: min(len(chunk), size - off)], off)
            os.fsync(fd)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):  # (not made at all: the error that said why is the one to see)
            os.unlink(tmp)
        if isinstance(exc, CreateInterrupted) and os.path.lexists(tmp):  # (its message says it was removed)
            raise CreateInterrupted(
                f"stopped by {signal.Signals(exc.signum).name} while writing {path}, and its partly written {tmp} could not be removed; remove it",
                signum=exc.signum,
            ) from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on the filesystem" if exc.errno == errno.ENOSPC else "the disk quota is used up"
            now = _free_bytes(parent)
            raise NoSpace(
                f"cannot create {path}: {why} of {parent} while writing its {_bytes_text(size)}"
                f"{'' if now is None else f' ({_bytes_text(now)} free now)'}; {_room_fix(now, record_size)}"
            ) from None
        raise
    os.close(fd)
    os.replace(tmp, path)  # never a half-made file under the real name
    fsync_dir(parent)
    log.info("takeover_file_created", path=path, records=records, record_size=record_size)
    return header


def _free_bytes(folder: str) -> int | None:
    """The bytes free on `folder`'s filesystem for any user (as `df` shows them: a root's file does
    not eat the blocks reserved for root either); None where the filesystem does not say (no
    statvfs, or no size reported)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    if st.f_blocks == 0:  # (some FUSE and pseudo filesystems report no size at all)
        return None
    return int(st.f_bavail) * int(st.f_frsize or st.f_bsize)


def _bytes_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _room_fix(free: int | None, record_size: int) -> str:
    fit = None if free is None else free // record_size
    fewer = f"fewer --records (at most {fit} fit now)" if fit is not None and fit >= MIN_RECORDS else "fewer --records"
    return f"free space there, or choose {fewer} or a path on another filesystem"


@contextlib.contextmanager
def _signals_raise(path: str, tmp: str) -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT, where this process leaves them as Python starts (the main
    thread only: no one else's handler is replaced), raise CreateInterrupted in here, so that
    the caller removes its half-written temporary file instead of dying with it left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:  # (a second signal while the first one's exception unwinds: that one is said)
            return
        fired = True
        raise CreateInterrupted(
            f"stopped by {signal.Signals(signum).name} while writing {path}: its partly written {tmp} was removed"
            f" and nothing was created or replaced; run the command again to create it",
            signum=signum,
        )

    saved: list[tuple[signal.Signals, Any]] = []
    for sig, untouched in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is untouched:
            saved.append((sig, signal.signal(sig, stop)))
    try:
        yield
    finally:
        for sig, old in saved:
            signal.signal(sig, old)


def _refuse_used(path: str, record_size: int) -> None:
    """A takeover file a pair has written (a batch: generation above 0) is not replaced by
    `--force` alone: a running active keeps writing the file it has open until its next batch
    write, which then finds the new one's geometry against its config and stops being hot
    (docs/operations.md §3). Nor is one whose header is torn (a power loss while it was
    rewritten) but whose records hold a pair's batch writes: its active mends the header."""
    try:
        h = check_file(path)
    except HeaderCorrupt as exc:
        _refuse_torn(path, record_size, str(exc))
        return
    except (TakeoverFileError, OSError):
        return  # not a takeover file in use (damaged, another kind): --force replaces it as asked
    if h.generation <= 0:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.written_at_ms / 1000))
    raise TakeoverFileError(
        f"{path} is in use by a pair: its last batch (generation {h.generation}) was written by {h.writer_host or '?'} at {when};"
        " a running active keeps writing the file it has open: stop both hosts first, then give --force twice"
        ' (or make a new file beside it and move the configs to it: docs/operations.md, "Creating and sizing the file")'
    )


def _refuse_torn(path: str, record_size: int, why: str) -> None:
    """Refuse to replace a file with a torn header whose records hold generations (at the header's
    own record size, which a torn write rarely reaches, else at the one asked for or 4096)."""
    gen = recno = 0
    r = record_size
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            rs = int.from_bytes(fh.read(36)[32:36], "little")
        for r in dict.fromkeys(x for x in (rs, record_size, DEFAULT_RECORD_SIZE) if _sane_record_size(x)):
            gen, recno = scan_generation(path, r, size // r)
            if gen > 0:
                break
    except OSError:
        return  # (unreadable: nothing known to protect, as for a file of another kind)
    if gen <= 0:
        return  # nothing any pair wrote: --force replaces it as asked
    why = why.split("; ", 1)[0].split(f"{path} is ", 1)[-1]  # ("corrupt: checksum mismatch ...")
    raise TakeoverFileError(
        f"{path} is in use by a pair though its header is unreadable ({why}: a power loss while it was rewritten?): its"
        f" {size // r} records of {r} bytes hold batch writes up to generation {gen} (record {recno}), and the pair's active"
        " rewrites the header from them at its next batch write: start it rather than replace the file; to replace it all"
        " the same, stop both hosts first, then give --force twice"
    )
