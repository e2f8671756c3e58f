"""The session takeover file (110), SPEC §4; byte layout in docs/takeover-file.md.

Modules:
  layout      geometry (N, R, E, B, K) and the size check N >= 3·B + 1
  startup_id  the 48-bit startup identifier
  records     record and session-information encoding, checksums, record 0
  fileio      NFS-safe reads and writes, file checks, pre-allocation
  writer      the active's batch write and ring (sequential area) group commit
  reader      the standby's batch read and ring cursor
  store       the asyncio facade the daemons use (deadlines, group commit)
  inspect     the whole-file report of `hsbctl file inspect`
  faults      fault injection hooks for tests
"""

from hsb.takeover.errors import (
    BatchReadError,
    EntryTooLarge,
    NoBatchWritten,
    RecordError,
    StaleGroup,
    StartupIdMismatch,
    StorageNotResponding,
    TakeoverError,
    TakeoverFileError,
    TakeoverFileTooSmall,
)
from hsb.takeover.faults import Faults
from hsb.takeover.fileio import check_file, create_file
from hsb.takeover.layout import DEFAULT_RECORD_SIZE, ENTRY_SIZE, Layout, batch_records_for, entries_per_record, size_check
from hsb.takeover.reader import BatchSnapshot, PollResult, PollStatus, RingReader, batch_read, read_header
from hsb.takeover.records import Header, SessionEntry
from hsb.takeover.startup_id import decode_startup_id, describe_startup_id, startup_id
from hsb.takeover.store import TakeoverStore
from hsb.takeover.writer import TakeoverWriter

__all__ = [
    "DEFAULT_RECORD_SIZE",
    "ENTRY_SIZE",
    "BatchReadError",
    "BatchSnapshot",
    "EntryTooLarge",
    "Faults",
    "Header",
    "Layout",
    "NoBatchWritten",
    "StaleGroup",
    "PollResult",
    "PollStatus",
    "RecordError",
    "RingReader",
    "SessionEntry",
    "StartupIdMismatch",
    "StorageNotResponding",
    "TakeoverError",
    "TakeoverFileError",
    "TakeoverFileTooSmall",
    "TakeoverStore",
    "TakeoverWriter",
    "batch_read",
    "batch_records_for",
    "check_file",
    "create_file",
    "decode_startup_id",
    "describe_startup_id",
    "entries_per_record",
    "read_header",
    "size_check",
    "startup_id",
]
