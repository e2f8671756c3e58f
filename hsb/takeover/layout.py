"""Geometry of the session takeover file (110) and its size check (331/531).

Owns the constants of the byte layout (docs/takeover-file.md), the `Layout`
of one file (N records of R bytes: header, batch area of B records,
sequential area used as a ring of K slots) and `size_check`, which refuses a
file with N < 3·B + 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hsb import TAKEOVER_FORMAT
from hsb.takeover.errors import RecordCountMismatch, RecordSizeMismatch, TakeoverFileTooSmall

MAGIC = b"HSBT"
VERSION = TAKEOVER_FORMAT

KIND_EMPTY = 0  # an all-zero record: never written
KIND_HEADER = 1
KIND_BATCH = 2
KIND_RING = 3
KIND_NAMES = {KIND_EMPTY: "empty", KIND_HEADER: "header", KIND_BATCH: "batch", KIND_RING: "ring"}

# Every record starts with this: magic, kind, version, entry count, generation,
# payload length, seq, attempt, crc32. The crc field is the last 4 bytes.
# `attempt` (once a reserved 0) names the batch write a record belongs to, random per try:
# a generation a failed batch write burned may be written again by another process or host.
RECORD_HEADER = struct.Struct("<4sBBHIIQII")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 32
CRC_OFFSET = RECORD_HEADER_SIZE - 4

ENTRY_SIZE = 256  # fixed maximum encoded size of one session information entry
PAYLOAD_PREFIX = 3  # MessagePack array16 marker + u16 count in front of the entries

DEFAULT_RECORD_SIZE = 4096
RECORD_ALIGN = 512
MIN_RECORD_SIZE = 512
MAX_RECORD_SIZE = 1 << 20
MIN_RECORDS = 4  # header, one batch record, two ring slots: the smallest useful file
MAX_RECORDS = 0xFFFF_FFFF


def entries_per_record(record_size: int, entry_size: int = ENTRY_SIZE) -> int:
    """E: how many entries of at most `entry_size` bytes always fit one record."""
    return (record_size - RECORD_HEADER_SIZE - PAYLOAD_PREFIX) // entry_size


def batch_records_for(terminals: int, record_size: int = DEFAULT_RECORD_SIZE, entry_size: int = ENTRY_SIZE) -> int:
    """B = ceil(terminals / E); 0 terminals need no batch records."""
    if terminals < 0:
        raise ValueError(f"terminal count must be >= 0, not {terminals}")
    e = entries_per_record(record_size, entry_size)
    return -(-terminals // e)


def check_record_size(record_size: int) -> None:
    if record_size % RECORD_ALIGN or not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise ValueError(f"record size {record_size} is not a multiple of {RECORD_ALIGN} between {MIN_RECORD_SIZE} and {MAX_RECORD_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything lives in one file once B is known."""

    record_size: int
    records: int
    batch_records: int
    entry_size: int = ENTRY_SIZE

    @property
    def entries_per_record(self) -> int:
        return entries_per_record(self.record_size, self.entry_size)

    @property
    def ring_first(self) -> int:
        return self.batch_records + 1

    @property
    def ring_slots(self) -> int:
        """K = N - 1 - B."""
        return self.records - 1 - self.batch_records

    def ring_record(self, seq: int) -> int:
        """Record number that holds ring sequence number `seq` (seq >= 1)."""
        return self.batch_records + 1 + (seq - 1) % self.ring_slots

    def offset(self, record: int) -> int:
        return record * self.record_size


def needed_records(terminals: int, record_size: int = DEFAULT_RECORD_SIZE, entry_size: int = ENTRY_SIZE) -> int:
    """The N the size check asks of a file for `terminals`: 3·B + 1, at least MIN_RECORDS."""
    return max(3 * batch_records_for(terminals, record_size, entry_size) + 1, MIN_RECORDS)


def needs_text(terminals: int, record_size: int = DEFAULT_RECORD_SIZE, entry_size: int = ENTRY_SIZE) -> str:
    """What the size check asks, in words: `2000 terminals need B=134 batch records (…), so N
    must be at least 403 (3·B+1)`."""
    b = batch_records_for(terminals, record_size, entry_size)
    needed = needed_records(terminals, record_size, entry_size)
    if b == 0:
        return f"the smallest usable file has {needed}"
    e = entries_per_record(record_size, entry_size)
    return f"{terminals} terminals need B={b} batch records ({e} entries per {record_size}-byte record), so N must be at least {needed} (3·B+1)"


def size_check(
    records: int,
    terminals: int,
    record_size: int = DEFAULT_RECORD_SIZE,
    *,
    path: str | None = None,
    entry_size: int = ENTRY_SIZE,
) -> Layout:
    """Size check (331/531, [0037], [0054]): N must be at least 3·B + 1.

    B for the batch area, 2·B for the ring so that all terminals changing at
    once fill only half of it, 1 for the header. Returns the layout for this
    terminal count, or raises `TakeoverFileTooSmall` giving N, B and the N needed.
    `records` are the file's (its header's): the message says so, and with `path`
    it names the command that recreates the file. (A config's records are checked
    with hsb.host.takeover_size, which says the fix that fits the file there.)
    """
    check_record_size(record_size)
    b = batch_records_for(terminals, record_size, entry_size)
    needed = needed_records(terminals, record_size, entry_size)
    if records < needed:
        msg = f"takeover file {path or 'the takeover file'} has {records} records; {needs_text(terminals, record_size, entry_size)}"
        if path:
            msg += f"; recreate it with `hsbctl file create {path} --records {needed} --record-size {record_size} --force`"
        raise TakeoverFileTooSmall(msg, records=records, batch_records=b, needed=needed)
    return Layout(record_size=record_size, records=records, batch_records=b, entry_size=entry_size)


def max_terminals(records: int, record_size: int = DEFAULT_RECORD_SIZE, entry_size: int = ENTRY_SIZE) -> int:
    """The largest terminal count that passes the size check for N records."""
    return max(0, (records - 1) // 3) * entries_per_record(record_size, entry_size)


def geometry_mismatch(
    path: str, has_records: int, has_record_size: int, records: int | None, record_size: int | None, terminals: int | None = None
) -> RecordSizeMismatch | RecordCountMismatch | None:
    """The file's geometry (its header's N records of R bytes) against the config's `records` and
    `record_size` (None: not asked): None when they agree, else the one line the start and hsbd
    --check-config give, naming both and the fix. The config's keys set to the file's when that
    geometry holds `terminals` (this host's; None: not known); else only the file recreated at
    the config's (setting the keys to a file too small for the terminals fails the size check)."""
    count_off = records is not None and records != has_records
    size_off = record_size is not None and record_size != has_record_size
    if not (count_off or size_off):
        return None
    said = " and ".join([f"records = {records}"] * count_off + [f"record_size = {record_size}"] * size_off)
    keys = " and ".join([f"records = {has_records}"] * count_off + [f"record_size = {has_record_size}"] * size_off)
    n, r = records or has_records, record_size or has_record_size
    recreate = f"recreate it with `hsbctl file create {path} --records {n} --record-size {r} --force` (not under a running active)"
    line = f"takeover file {path} has {has_records} records of {has_record_size} bytes but the config says {said}; "
    if terminals is not None and has_records < needed_records(terminals, has_record_size):
        line += f"too few for this host: {needs_text(terminals, has_record_size)}; {recreate}"
    else:
        line += f"set {keys} in the config (the file is the truth), or {recreate}"
    return RecordSizeMismatch(line) if size_off else RecordCountMismatch(line)
