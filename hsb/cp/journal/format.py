"""The byte format of the CP journal's segment files (docs/cp-journal.md), sans-IO.

A segment is a sequence of records:

    magic 0xB5 0x1A | length: u32 big-endian | crc32: u32 over length + payload | payload

and the payload is one MessagePack array whose first element names the kind (hsb.cp.journal.
recovery). `scan()` reads a segment's bytes back. A record that does not check out (bad magic,
a length past the end, a checksum mismatch, a payload that does not decode) is either the **torn
tail** of a write the crash interrupted, which is dropped, or **damage**, which stops the start:
it is torn only if no valid record follows it anywhere in the file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

MAGIC = b"\xb5\x1a"
HEADER = struct.Struct(">2sII")  # magic, payload length, crc32(length || payload)
MAX_RECORD = 256 * 1024 * 1024


class JournalDamaged(Exception):
    """A record in the middle of a segment does not check out: never skipped silently."""

    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(
            f"CP journal damaged: {path} at offset {offset}: {why}; the start is stopped rather than"
            " skip it (move the journal directory aside to start empty, and keep it for inspection)"
        )
        self.path = path
        self.offset = offset
        self.why = why


LENGTH = struct.Struct(">I")


def encode(payload: Any) -> bytes:
    """One record's bytes (tools, tests, benches; the journal keeps an `encoder()` of its own)."""
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    n = len(body)
    return HEADER.pack(MAGIC, n, zlib.crc32(body, zlib.crc32(LENGTH.pack(n)))) + body


def encoder() -> Callable[[Any], bytes]:
    """`encode` with its own packer and every name bound once: two or three records a message
    are encoded on the CP's loop (about a third less than calling `encode`)."""
    pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    crc32, header, length = zlib.crc32, HEADER.pack, LENGTH.pack

    def enc(payload: Any) -> bytes:
        body: bytes = pack(payload)
        n = len(body)
        return header(MAGIC, n, crc32(body, crc32(length(n)))) + body

    return enc


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
    """The records of one segment: (payloads, end of the last valid record, why the tail was torn
    or None). Raises JournalDamaged for a bad record that a valid one follows. `until`: stop after
    the first record of that kind (what follows is not read, nor checked)."""
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
                    append(rec)
                    off = end
                    if until is not None and isinstance(rec, list) and rec and rec[0] == until:
                        return out, off, None
                    continue
        _, why = _check(buf, off)
        # torn only if nothing valid follows
        nxt = buf.find(MAGIC, off + 1)
        while nxt != -1:
            if _check(buf, nxt)[1] is None:
                raise JournalDamaged(path, off, f"{why}, and a valid record follows at offset {nxt}")
            nxt = buf.find(MAGIC, nxt + 1)
        return out, off, why
    return out, off, None
