"""The byte format of the CP journal's segment files (docs/cp-journal.md), sans-IO.

A segment is a sequence of records:

    magic 0xB5 0x1A | length: u32 big-endian | crc32: u32 over length + payload | payload

and the payload is one MessagePack array whose first element names the kind (hsb.cp.journal.
recovery). A group commit of several records is written as one **group record**, whose payload
is the array `["g", record, record, ...]`: one header and one checksum for the group, and its
records decoded at start by one call into msgpack instead of one each (`group()`). A group is
written whole or, at a crash, torn whole: nothing in it was acknowledged before it was durable.
A flush of several group records writes and syncs each before the next (hsb.cp.journal.writer),
so that a crash leaves at most the last one torn: never a torn one with a whole one after it.

`scan()` reads a segment's bytes back, group records opened into their records. A record that
does not check out (bad magic, a length past the end, a checksum mismatch) is either the **torn
tail** of a write the crash interrupted, which is dropped, or **damage**, which stops the start:
it is torn only if no valid record follows it anywhere in the file. A record whose checksum holds
but whose payload does not decode is damage wherever it is: a torn write cannot pass its
checksum. A segment's file is allocated whole when it is created (hsb.fsutil.preallocate): zeros
from a record's end to the end of the file are room not written yet, the segment's clean end.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

from hsb import JOURNAL_FORMAT as _JOURNAL_FORMAT

MAGIC = b"\xb5\x1a"
HEADER = struct.Struct(">2sII")  # magic, payload length, crc32(length || payload)
MAX_RECORD = 256 * 1024 * 1024


class JournalDamaged(Exception):
    """A record in the middle of a segment does not check out: never skipped silently."""

    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(self.line(path, offset, why))
        self.path = path
        self.offset = offset
        self.why = why

    @staticmethod
    def line(path: str, offset: int, why: str) -> str:
        return (
            f"CP journal damaged: {path} at offset {offset}: {why}; the start is stopped rather than"
            " skip it (to start empty: `hsbcpd --config FILE --set-journal-aside` moves the records aside, kept for"
            " inspection, and keeps the generation the hosts know)"
        )


# The record kinds and fields this hsbcpd writes and reads. Each checkpoint says it ("format"), so
# that a later hsbcpd that changes what a record means raises it, and this one refuses its journal
# as a newer one's (JournalNewer) rather than misread it. A new record kind needs no new level:
# one this hsbcpd does not know is refused the same way. (The level itself is kept in hsb/__init__.py,
# beside the other formats that --version prints.)
JOURNAL_FORMAT = _JOURNAL_FORMAT


class JournalNewer(JournalDamaged):
    """Records of a newer hsbcpd: whole (their checksums hold) but of a kind, or a format level,
    this one does not know. Not damage, and never set aside as damage: what they hold is owed.
    Stops the start all the same (a JournalDamaged to every caller)."""

    @staticmethod
    def line(path: str, offset: int, why: str) -> str:
        from hsb import __version__

        return (
            f"CP journal written by a newer hsbcpd: {path} at offset {offset}: {why}, which this hsbcpd (hsb {__version__})"
            " does not know; it cannot read the journal, and stops rather than skip what it holds: start the newer hsbcpd again"
            " (to go back to this version, the newer one must settle the journal first: docs/operations.md §11, Upgrading)"
        )


LENGTH = struct.Struct(">I")
GROUP = "g"  # the kind of a group record: its other elements are records
GROUP_MAX = 4096  # records in one group record at most (a takeover snapshot is split) ...
GROUP_BYTES = 1024 * 1024  # ... and about this many bytes of them: far below MAX_RECORD
_GROUP_KIND = msgpack.packb(GROUP)
_array_header = msgpack.Packer().pack_array_header


def _framed(body: bytes) -> bytes:
    n = len(body)
    return HEADER.pack(MAGIC, n, zlib.crc32(body, zlib.crc32(LENGTH.pack(n)))) + body


def encode(payload: Any) -> bytes:
    """One record's bytes (tools, tests, benches; the journal encodes payloads with `packer()`
    and frames each group commit with `group()`)."""
    return _framed(msgpack.packb(payload, use_bin_type=True))


def packer() -> Callable[[Any], bytes]:
    """A record's payload, unframed: the CP's loop encodes each record as it is appended, and
    `group()` frames them when they are written."""
    pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    return pack


def group(payloads: list[bytes]) -> bytes:
    """Payloads from `packer()` as the bytes written: one record alone as it is, more than one as
    a single group record `["g", ...]` (at most GROUP_MAX records; the caller splits)."""
    if len(payloads) == 1:
        return _framed(payloads[0])
    return _framed(b"".join([_array_header(len(payloads) + 1), _GROUP_KIND, *payloads]))


def _check(buf: bytes | memoryview, off: int) -> tuple[int, str | None]:
    """(end offset, None) for a valid record at `off`, else (0, why)."""
    if len(buf) - off < HEADER.size:
        return 0, f"{len(buf) - off} bytes, shorter than a record header"
    magic, n, crc = HEADER.unpack_from(buf, off)
    if magic != MAGIC:
        return 0, "no record starts here (bad magic)"
    if n > MAX_RECORD:
        return 0, f"record length {n} is implausible"
    end = off + HEADER.size + n
    if end > len(buf):
        return 0, f"record of {n} bytes runs past the end of the file"
    body = bytes(buf[off + HEADER.size : end])
    if zlib.crc32(body, zlib.crc32(n.to_bytes(4, "big"))) != crc:
        return 0, "checksum mismatch"
    return end, None


def scan(buf: bytes, path: str = "?", until: str | None = None) -> tuple[list[Any], int, str | None]:
    """The records of one segment, group records opened: (payloads, end of the last valid record,
    why the tail was torn or None). Raises JournalDamaged for a bad record that a valid one
    follows. `until`: stop after the first record of that kind (what follows is not read, nor
    checked; the rest of its group is dropped)."""
    out: list[Any] = []
    append = out.append
    off = 0
    unpackb = msgpack.unpackb
    crc32 = zlib.crc32
    unpack_from = HEADER.unpack_from
    hsize = HEADER.size
    mv = memoryview(buf)
    size = len(buf)
    while off < size:
        # the common case inline (a valid record); anything odd goes to _check for the reason
        if size - off >= hsize:
            magic, n, crc = unpack_from(buf, off)
            end = off + hsize + n
            if magic == MAGIC and end <= size and n <= MAX_RECORD:
                body = mv[off + hsize : end]
                if crc32(body, crc32(n.to_bytes(4, "big"))) == crc:
                    try:
                        rec = unpackb(body, raw=False, strict_map_key=False)
                    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
                        raise JournalDamaged(path, off, f"the record's payload does not decode ({exc})") from None
                    off = end
                    if rec.__class__ is list and rec and rec[0] == GROUP:
                        if until is not None:
                            for k in range(1, len(rec)):
                                item = rec[k]
                                if isinstance(item, list) and item and item[0] == until:
                                    out += rec[1 : k + 1]
                                    return out, off, None
                        out += rec[1:]
                        continue
                    append(rec)
                    if until is not None and isinstance(rec, list) and rec and rec[0] == until:
                        return out, off, None
                    continue
        if len(buf.rstrip(b"\x00")) <= off:
            return out, off, None  # the rest of a segment allocated whole (hsb.fsutil.preallocate): not written yet
        _, why = _check(buf, off)
        # torn only if nothing valid follows
        nxt = _follower(buf, off)
        if nxt is not None:
            raise JournalDamaged(path, off, f"{why}, and a valid record follows at offset {nxt}")
        return out, off, why
    return out, off, None


def _follower(buf: bytes, off: int) -> int | None:
    """Where a valid record follows the bad one at `off`, if one does: then it is damage, not a
    torn write (a crash tears the last record only). A valid record met inside the bad one's own
    extent, as its header gives it, counts only if valid records run from it to the end of what
    was written: else it is a record's bytes inside that record's payload (a terminal's data may
    hold anything), met because its write was torn after them."""
    hsize = HEADER.size
    claimed = None
    if len(buf) - off >= hsize:
        magic, n, _ = HEADER.unpack_from(buf, off)
        if magic == MAGIC and n <= MAX_RECORD:
            claimed = off + hsize + n
    written = len(buf.rstrip(b"\x00"))
    nxt = buf.find(MAGIC, off + 1)
    while nxt != -1:
        end, bad = _check(buf, nxt)
        if bad is None and (claimed is None or nxt >= claimed or _runs_to(buf, end, written)):
            return nxt
        nxt = buf.find(MAGIC, nxt + 1)
    return None


def _runs_to(buf: bytes, off: int, written: int) -> bool:
    """Whether valid records follow one another from `off` to `written` (the end of the data)."""
    while off < written:
        end, bad = _check(buf, off)
        if bad is not None:
            return False
        off = end
    return True


def locate(buf: bytes, index: int) -> tuple[int, int | None]:
    """Where the `index`-th payload that `scan(buf)` returned sits: (offset of its record, its
    position in that group record, or None for a record alone). For an error message about a
    record that checks out but makes no sense: the file's offset to look at, not a guess."""
    off = 0
    seen = 0
    while off < len(buf):
        end, why = _check(buf, off)
        if why is not None:
            break
        rec = msgpack.unpackb(buf[off + HEADER.size : end], raw=False, strict_map_key=False)
        if rec.__class__ is list and rec and rec[0] == GROUP:
            if index < seen + len(rec) - 1:
                return off, index - seen
            seen += len(rec) - 1
        elif index == seen:
            return off, None
        else:
            seen += 1
        off = end
    return off, None
