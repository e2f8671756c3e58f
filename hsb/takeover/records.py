"""Encoding of records and of session information entries (docs/takeover-file.md).

A record is R bytes: a 32-byte record header (magic, kind, version, entry
count, generation, payload length, seq, attempt, crc32) then the payload, zero-padded.
The crc32 covers every byte of the record except the crc field itself, so a
torn write anywhere, padding included, is caught. An all-zero record is
"never written", not corrupt.

Session information [0054] = terminal name + session attributes + open/closed;
one entry is the MessagePack array [name, open, attrs], at most ENTRY_SIZE bytes.
A payload holding entries is a MessagePack array16 of them.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from hsb.takeover.errors import EntryTooLarge
from hsb.takeover.layout import (
    CRC_OFFSET,
    ENTRY_SIZE,
    KIND_BATCH,
    KIND_HEADER,
    KIND_NAMES,
    KIND_RING,
    MAGIC,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    VERSION,
    Layout,
    entries_per_record,
)
from hsb.terminals import NAME_MAX

HOST_MAX = 64
# Payload of record 0: record size, records, entry size, E, B, startup id,
# batch entries, pair tag (hsb.takeover.pair; 0: none), written at (ms since the Unix epoch), host name.
HEADER_PAYLOAD = struct.Struct("<IIHHIQIIQB64s")


class SessionEntry(NamedTuple):
    """Session information of one terminal [0054]."""

    terminal: str
    attrs: dict[str, Any]
    open: bool


def encode_entry(entry: SessionEntry, entry_size: int = ENTRY_SIZE) -> bytes:
    """MessagePack [name, open, attrs]; a ValueError naming the terminal if it cannot fit."""
    return encode_entries([entry], entry_size)[0]


def encode_entries(entries: Iterable[SessionEntry], entry_size: int = ENTRY_SIZE) -> list[bytes]:
    """Each entry encoded; ValueError (EntryTooLarge if it is only too big) naming the terminal."""
    pack = msgpack.Packer().pack  # one packer per call: not shared between threads
    out: list[bytes] = []
    for name, attrs, is_open in entries:
        if type(name) is not str or not name or (len(name) > NAME_MAX // 4 and len(name.encode()) > NAME_MAX):
            raise ValueError(f"terminal name {name!r} must be 1..{NAME_MAX} bytes of UTF-8")
        if not isinstance(attrs, dict):
            raise ValueError(f"session attributes of terminal {name!r} must be a dict, not {type(attrs).__name__}")
        try:
            data = pack([name, bool(is_open), attrs])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"session attributes of terminal {name!r} cannot be encoded: {exc}") from None
        if len(data) > entry_size:
            raise EntryTooLarge(
                f"session attributes of terminal {name!r} are too large for the takeover file: "
                f"the entry encodes to {len(data)} bytes, at most {entry_size} fit"
            )
        out.append(data)
    return out


def encode_payload(encoded: list[bytes]) -> bytes:
    return b"\xdc" + len(encoded).to_bytes(2, "big") + b"".join(encoded)


def decode_payload(payload: memoryview | bytes, count: int) -> list[SessionEntry]:
    """Entries of one record; ValueError with the reason if the payload is not what it claims."""
    try:
        items = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"bad entry encoding ({type(exc).__name__})") from None
    if type(items) is not list or len(items) != count:
        n = len(items) if type(items) is list else "no list of"
        raise ValueError(f"payload holds {n} entries, its record header says {count}")
    try:
        out = [_new_tuple(SessionEntry, (n, a, o)) for n, o, a in items]
    except (TypeError, ValueError):
        raise ValueError("bad entry encoding (not [name, open, attrs])") from None
    for n, a, o in out:
        if type(n) is not str or type(o) is not bool or type(a) is not dict:
            raise ValueError("bad entry encoding (not [name, open, attrs])")
    return out


_new_tuple = tuple.__new__


class Record(NamedTuple):
    kind: int
    version: int
    n_entries: int  # the record header's entry count
    generation: int
    seq: int
    payload: memoryview
    attempt: int = 0  # the batch write this record belongs to (0: an earlier version wrote it)


class BadRecord(Exception):
    """A record that is neither valid nor never-written. `torn`: a checksum or
    length problem that a write in progress can cause (a retry may find it whole)."""

    def __init__(self, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.torn = torn


def crc_of(buf: memoryview | bytes | bytearray) -> int:
    return zlib.crc32(buf[CRC_OFFSET + 4 :], zlib.crc32(buf[:CRC_OFFSET]))


def pack_record(
    kind: int,
    generation: int,
    seq: int,
    payload: bytes,
    record_size: int,
    count: int = 0,
    into: bytearray | None = None,
    at: int = 0,
    attempt: int = 0,
) -> bytearray:
    """One whole record (R bytes) with its checksum; written into `into` at `at` if given.
    `attempt`: the batch write's (docs/takeover-file.md §7), in the header and every record of it."""
    if len(payload) > record_size - RECORD_HEADER_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a {record_size}-byte record")
    buf = into if into is not None else bytearray(record_size)
    RECORD_HEADER.pack_into(buf, at, MAGIC, kind, VERSION, count, generation, len(payload), seq, attempt, 0)
    end = at + RECORD_HEADER_SIZE + len(payload)
    buf[at + RECORD_HEADER_SIZE : end] = payload
    if into is not None:
        buf[end : at + record_size] = bytes(at + record_size - end)
    view = memoryview(buf)[at : at + record_size]
    struct.pack_into("<I", buf, at + CRC_OFFSET, crc_of(view))
    return buf


_ZERO_HEADER = bytes(RECORD_HEADER_SIZE)


def parse_record(view: memoryview) -> Record | None:
    """The record in `view` (exactly R bytes); None if never written; BadRecord otherwise."""
    if view[:RECORD_HEADER_SIZE] == _ZERO_HEADER and view == bytes(len(view)):
        return None
    magic, kind, version, count, gen, plen, seq, attempt, crc = RECORD_HEADER.unpack_from(view)
    if crc != crc_of(view):
        raise BadRecord("checksum mismatch (torn write or corruption)", torn=True)
    if magic != MAGIC:
        raise BadRecord(f"bad magic {bytes(magic)!r}", torn=False)
    if version != VERSION:
        raise BadRecord(f"format version {version}, this program reads {VERSION}", torn=False)
    if kind not in (KIND_HEADER, KIND_BATCH, KIND_RING):
        raise BadRecord(f"unknown record kind {kind}", torn=False)
    if plen > len(view) - RECORD_HEADER_SIZE:
        raise BadRecord(f"payload length {plen} exceeds the record", torn=False)
    return Record(kind, version, count, gen, seq, view[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + plen], attempt)


def kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, f"kind {kind}")


@dataclass(frozen=True, slots=True)
class Header:
    """Record 0: what a reader needs to find and trust everything else."""

    record_size: int
    records: int
    batch_records: int
    generation: int
    startup_id: int
    batch_entries: int
    entry_size: int = ENTRY_SIZE
    written_at_ms: int = 0
    writer_host: str = ""
    pair_tag: int = 0  # the writing pair's tag (hsb.takeover.pair); 0: none (a tool, or an earlier version)
    # the batch write's own random identifier, in its every record: the generation alone can be
    # written twice (a failed try's, reused by a writer that never saw it); 0: an earlier version
    attempt: int = 0

    @property
    def layout(self) -> Layout:
        return Layout(self.record_size, self.records, self.batch_records, self.entry_size)

    @property
    def entries_per_record(self) -> int:
        return entries_per_record(self.record_size, self.entry_size)


def encode_header(h: Header) -> bytearray:
    host = h.writer_host.encode()[:HOST_MAX]
    payload = HEADER_PAYLOAD.pack(
        h.record_size,
        h.records,
        h.entry_size,
        h.entries_per_record,
        h.batch_records,
        h.startup_id,
        h.batch_entries,
        h.pair_tag,
        h.written_at_ms or int(time.time() * 1000),
        len(host),
        host,
    )
    return pack_record(KIND_HEADER, h.generation, 0, payload, h.record_size, attempt=h.attempt)


def decode_header(rec: Record) -> Header:
    """Header fields of a checksummed record 0; ValueError naming an inconsistent field."""
    if rec.kind != KIND_HEADER:
        raise ValueError(f"record 0 is a {kind_name(rec.kind)} record, not the header")
    if len(rec.payload) < HEADER_PAYLOAD.size:
        raise ValueError(f"header payload is {len(rec.payload)} bytes, expected {HEADER_PAYLOAD.size}")
    rs, n, es, e, b, sid, be, tag, when, hlen, host = HEADER_PAYLOAD.unpack_from(rec.payload)
    h = Header(rs, n, b, rec.generation, sid, be, es, when, bytes(host[: min(hlen, HOST_MAX)]).decode(errors="replace"), tag, rec.attempt)
    if es == 0 or e != h.entries_per_record or e == 0:
        raise ValueError(f"header says {e} entries of {es} bytes per {rs}-byte record, which is inconsistent")
    if n < 2 or b > n - 2:  # the ring needs at least one slot
        raise ValueError(f"header says B={b} batch records in a file of {n} records")
    if be > b * e:
        raise ValueError(f"header says {be} batch entries, but B={b} records hold at most {b * e}")
    return h
