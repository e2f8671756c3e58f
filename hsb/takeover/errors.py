"""The takeover file's exceptions: one class per thing that can go wrong.

Messages are one line, name the file or record, and say what to do about it:
daemons print them as-is when they refuse to start, `hsbctl file` as `error: ...`.
"""

from __future__ import annotations


class TakeoverError(Exception):
    """Base of every takeover-file error."""


class TakeoverFileError(TakeoverError):
    """The file as a whole cannot be used (missing, wrong kind, bad header, too small...)."""


class FileMissing(TakeoverFileError):
    pass


class FileGone(FileMissing, FileNotFoundError):
    """The file a running active writes was removed from its path (deleted, or its storage
    unmounted): an OSError too, so that the host's status shows its storage failing."""


class NotRegularFile(TakeoverFileError):
    pass


class NotWritable(TakeoverFileError):
    """This host cannot open the file for writing: either host may become the active."""


class BadMagic(TakeoverFileError):
    pass


class UnsupportedVersion(TakeoverFileError):
    pass


class FileTruncated(TakeoverFileError):
    pass


class HeaderCorrupt(TakeoverFileError):
    pass


class RecordSizeMismatch(TakeoverFileError):
    pass


class RecordCountMismatch(TakeoverFileError):
    pass


class StartupIdMismatch(TakeoverFileError):
    """Record 0 holds another standby's startup identifier: the hosts name different files."""

    def __init__(self, message: str, *, expected: int | None = None, found: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class ForeignWriter(TakeoverFileError):
    """The file's last batch was written by a host of another pair (hsb.takeover.pair): the
    active does not write it, the standby does not read it."""

    def __init__(self, message: str, *, writer: str = "") -> None:
        super().__init__(message)
        self.writer = writer


class NoSpace(TakeoverFileError):
    """`hsbctl file create`: the filesystem has not the room for the file (refused up front, or
    ENOSPC/EDQUOT while writing it); its temporary file is removed."""


class CreateInterrupted(TakeoverFileError):
    """`hsbctl file create` was stopped by a signal while it wrote the file: its temporary file is
    removed, nothing is created or replaced; `signum` is the signal's number."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class TakeoverFileTooSmall(TakeoverFileError):
    """Size check (331/531): N < 3·B + 1."""

    def __init__(self, message: str, *, records: int, batch_records: int, needed: int) -> None:
        super().__init__(message)
        self.records = records
        self.batch_records = batch_records
        self.needed = needed


class RecordError(TakeoverError):
    """One record is unusable; `record` is its number in the file, `reason` says why."""

    def __init__(self, record: int, reason: str, *, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}record {record}: {reason}")
        self.record = record
        self.reason = reason


class BatchReadError(RecordError):
    """A batch record was never written, torn, corrupt or from another generation."""


class EntryTooLarge(ValueError):
    """A session information entry does not fit the fixed entry size."""


class NoBatchWritten(TakeoverError):
    """Ring writes are only meaningful after a batch write (SPEC §5.1 steps 5 and 8)."""


class StaleGroup(NoBatchWritten):
    """A ring group taken before the batch write that now heads the file: what it holds is in
    that batch (or older than it), so it is not written under the batch's generation."""


class StorageNotResponding(TakeoverError):
    """A file operation missed its deadline (a hung NFS mount, a dead disk)."""

    def __init__(self, op: str, timeout: float) -> None:
        super().__init__(f"takeover storage not responding: {op} took longer than {timeout:.3g}s")
        self.op = op
        self.timeout = timeout
