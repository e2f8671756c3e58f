"""Sans-IO framing of SPEC §6.1: a 4-byte big-endian length, then a MessagePack map.

`Decoder.feed()` takes raw bytes and returns the complete messages in them, or
raises one `ProtocolError` whose `code` names which §6.1 case was violated.
After an error the decoder is poisoned: the connection must be closed.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Collection
from typing import Any

import msgpack

DEFAULT_MAX_FRAME = 1024 * 1024
FLAT_KEYS_MAX = 16  # keys of a frame on a flat link (the terminals': hello, msg, confirm, bye have 2 to 4)
LOGIN_MAX = 4096  # bytes: the first frame of a connection (hello, auth) at most; the least max_frame
# Frames queued on one connection (FramedProtocol, FrameStream) that are written at once,
# not at the end of the turn: with one busy terminal a whole turn's deliveries went out as one
# write, the host answered them as one batch, and the three processes took turns (a convoy,
# ~1 core busy of 2); writing every 32 frames keeps the next hop working meanwhile
# (1 terminal, 64 in flight: 40-46 % -> 57-60 % of direct in bench/cp.py).
FLUSH_AT = 32
_LEN = struct.Struct(">I")
# a TLS client's first bytes (a handshake record, version 3.x) where a plaintext port wants a
# frame: their length reads as ~369 MB. Said as what it is, the fix with it
TLS_RECORD_HANDSHAKE, TLS_MAJOR = 0x16, 0x03
TLS_CLIENT_HELLO = (
    ": these are the bytes of a TLS handshake (a ClientHello): the client speaks TLS and this port does not;"
    " give this daemon the client's [tls] section (terminals: [tls] terminals = true), or connect without TLS"
)
# HTTP where a frame is wanted (its first four letters read as a length of about a gigabyte):
# a daemon's http_listen given as its terminal, host or admin port, or the other way round
HTTP_RESPONSE = (
    ": these are the bytes of an HTTP response: the other end is an HTTP port (a daemon's http_listen: /health, /metrics), not this link's"
)
HTTP_REQUEST = ": these are the bytes of an HTTP request: this port speaks hsb's frames; /health and /metrics are on the daemon's http_listen"
_HTTP_REQUESTS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")


def _looks_like(head: bytes) -> str:
    """What the four bytes read as a too-large length are, when they say it (else "")."""
    if head == b"HTTP":
        return HTTP_RESPONSE
    return HTTP_REQUEST if head in _HTTP_REQUESTS else ""


# Error codes, one per case of SPEC §6.1 (sent back in {"t": "error", "code": ...}).
EMPTY_FRAME = "empty_frame"
FRAME_TOO_LARGE = "frame_too_large"
BAD_MSGPACK = "bad_msgpack"
BAD_FIELDS = "bad_fields"
NOT_A_MAP = "not_a_map"
BAD_KEYS = "bad_keys"
MISSING_TYPE = "missing_type"
UNKNOWN_TYPE = "unknown_type"

ERROR_CODES = (EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK, NOT_A_MAP, BAD_KEYS, MISSING_TYPE, UNKNOWN_TYPE)


class ProtocolError(Exception):
    """A frame broke SPEC §6.1; `code` says which rule, `msg` says it for a human."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        # Whole, valid frames that preceded the bad one in the same feed().
        self.before: list[dict[str, Any]] = []

    def frame(self) -> dict[str, Any]:
        return {"t": "error", "code": self.code, "msg": self.msg}


_local = threading.local()


def batch_bytes(msg: dict[str, Any], key: str) -> int:
    """The size of batch frames the other side says it takes (`deliver_batch` in a host's
    register, `open_batch` in the CP's registered); 0, single frames, when it says nothing usable."""
    v = msg.get(key, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1024 else 0


def data_size(data: bytes | str) -> int:
    """The bytes of a message's data as encoded: text is UTF-8 (its length in characters undercounts)."""
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


def payload_max(max_frame: int) -> int:
    """The largest message data or reply that fits, with the fields around it, in one frame of
    `max_frame` bytes (the same rule where a terminal's message comes in and where a reply goes out)."""
    return max(max_frame - 1024, max_frame // 2)


def encode(msg: dict[str, Any]) -> bytes:
    """One frame for `msg` (a map with a string "t")."""
    # a kept Packer per thread: msgpack.packb builds a new one per call, half the cost of
    # encoding a small frame (0.98 vs 1.84 µs here), and the CP encodes three per message
    try:
        pack = _local.pack
    except AttributeError:
        pack = _local.pack = msgpack.Packer(use_bin_type=True).pack
    body: bytes = pack(msg)
    return _LEN.pack(len(body)) + body


def framed(body: bytes) -> bytes:
    """One frame for a MessagePack map already encoded (hsb.cp.deliver builds some from parts)."""
    return _LEN.pack(len(body)) + body


class Decoder:
    """Accumulates bytes and yields decoded frames.

    `known_types`, when given, is the set of "t" values this link accepts;
    anything else is `unknown_type`.
    """

    __slots__ = ("max_frame", "known_types", "_buf", "_failed", "_limit", "_flat", "_maps", "_hold", "_held", "_held_max")

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        known_types: Collection[str] | None = None,
        first_max: int | None = None,
        flat: bool = False,
        hold: bool = False,
        held_max: int | None = -1,
    ) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        # `first_max`: the first frame's own bound (a login: hello or auth), so that a connection
        # nobody has vouched for cannot make the daemon buffer max_frame bytes
        self._limit = min(first_max, max_frame) if first_max else max_frame
        self.known_types = frozenset(known_types) if known_types is not None else None
        self._buf = bytearray()
        self._failed: tuple[str, str] | None = None  # (code, msg): no exception kept, so no traceback cycle
        # `flat`: every frame one map of plain values (a terminal's): an array or a map inside it
        # is refused as it is met, not after a frame of a million empty maps was built (~70 MB
        # and tens of ms of the loop for 1 MiB of bytes)
        self._flat = flat
        self._maps = 0
        # `hold`: after the first frame (an auth), nothing more is decoded until `first_done()`
        # says it was accepted; until then what follows is kept as bytes, within the first
        # frame's bound (a client waits for auth_ok before it sends more). Else an unvouched
        # peer had its whole first read decoded (~250 KB: tens of MB of objects) before its
        # auth frame was even looked at.
        # `held_max`: the bytes kept so, at most (-1: the first frame's bound; None: no bound of
        # its own, for a link whose peer may send on without waiting, a terminal's: what one read
        # brings, as its first frame is answered, or its reading stopped, in the read that ends it)
        # (a first bound as large as max_frame still holds: max_frame may be LOGIN_MAX itself)
        self._hold = hold and (held_max != -1 or first_max is not None)
        self._held = False
        self._held_max = self._limit if held_max == -1 else held_max

    def _one_map(self, m: dict[Any, Any]) -> dict[Any, Any]:
        """msgpack calls this for each map as it is completed, the innermost first: the frame's
        own map is the last, so a second call is a map inside it."""
        self._maps += 1
        if self._maps > 1:
            raise ProtocolError(BAD_FIELDS, "a map inside the frame: this link's frames are one map of plain values")
        return m

    def first_done(self) -> None:
        """The login was accepted (or happened some other way: in-process users): max_frame from
        now on, and what was held back is decoded at the next `feed` (b"" will do)."""
        self._limit = self.max_frame
        self._held = False
        self._hold = False

    def has_type(self, data: bytes, t: str) -> bool:
        """Whether the frames held and those in `data` include a frame of type `t` (a small one:
        a `bye`), up to the first malformed frame. Only frames whose bytes hold "t": `t` are
        decoded, and none is walked when those bytes are nowhere. The decoder's state is
        left as it was (for a connection about to be dropped)."""
        buf = bytes(self._buf) + data
        mark = msgpack.packb("t") + msgpack.packb(t)  # the key and its value, as every frame of that type has them
        if self._failed is not None or buf.find(mark) < 0:
            return False
        pos, n = 0, len(buf)
        while n - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            end = pos + 4 + length
            if length == 0 or length > self.max_frame or end > n:
                return False
            if length <= 64 and buf.find(mark, pos + 4, end) >= 0:
                try:
                    if self._decode(buf[pos + 4 : end]).get("t") == t:
                        return True
                except ProtocolError:
                    return False
            pos = end
        return False

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._failed is not None:
            raise ProtocolError(*self._failed)
        buf = self._buf
        buf += data
        if self._held:
            if self._held_max is not None and len(buf) > self._held_max:
                self._failed = (FRAME_TOO_LARGE, f"more than {self._held_max} bytes sent before the first frame was answered")
                self._buf = bytearray()
                raise ProtocolError(*self._failed)
            return []
        out: list[dict[str, Any]] = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 4:
                (length,) = _LEN.unpack_from(buf, pos)
                if length == 0:
                    raise ProtocolError(EMPTY_FRAME, "frame of length 0")
                if length > self._limit:
                    first = " for a first frame (hello or auth)" if self._limit < self.max_frame else ""
                    if first and buf[pos] == TLS_RECORD_HANDSHAKE and buf[pos + 1] == TLS_MAJOR:
                        first += TLS_CLIENT_HELLO  # (its record header read as a length: 0x1603...)
                    else:
                        first += _looks_like(bytes(buf[pos : pos + 4]))
                    raise ProtocolError(FRAME_TOO_LARGE, f"frame of {length} bytes exceeds the maximum of {self._limit}{first}")
                if n - pos - 4 < length:
                    break
                body = bytes(buf[pos + 4 : pos + 4 + length])
                pos += 4 + length
                out.append(self._decode(body))
                if self._hold:  # the first frame: the rest waits for its answer
                    self._held = True
                    break
                self._limit = self.max_frame
        except ProtocolError as exc:
            self._failed = (exc.code, exc.msg)
            self._buf = bytearray()
            exc.before = out
            raise
        if pos:
            del buf[:pos]
        return out

    def _decode(self, body: bytes) -> dict[str, Any]:
        try:
            if self._flat:
                self._maps = 0
                # a few keys at most: a map of 100,000 padding keys in a megabyte took 15 MB and
                # 90 ms of the loop to decode before anything could refuse it
                # and no array: refused by its length as it is met, not once a megabyte of it is built
                msg = msgpack.unpackb(body, raw=False, object_hook=self._one_map, list_hook=_no_array, max_map_len=FLAT_KEYS_MAX, max_array_len=0)
            else:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError, ...)
            if self._flat and isinstance(exc, ValueError) and "max_map_len" in str(exc):
                raise ProtocolError(
                    BAD_FIELDS, f"a map of more than {FLAT_KEYS_MAX} keys: this link's frames are one map of a few plain values"
                ) from None
            if self._flat and isinstance(exc, ValueError) and "max_array_len" in str(exc):
                raise ProtocolError(BAD_FIELDS, "an array: this link's frames are one map of plain values") from None
            raise ProtocolError(
                BAD_MSGPACK,
                f"undecodable MessagePack ({type(exc).__name__}): send one MessagePack map with string keys per frame (docs/protocol.md)",
            ) from None
        if not isinstance(msg, dict):
            raise ProtocolError(NOT_A_MAP, f"frame is a {type(msg).__name__}, not a map")
        for key in msg:
            if not isinstance(key, str):
                raise ProtocolError(BAD_KEYS, "map keys must be strings")
        t = msg.get("t")
        if not isinstance(t, str):
            raise ProtocolError(MISSING_TYPE, 'map has no string "t" naming the message type')
        if self.known_types is not None and t not in self.known_types:
            raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {t[:40]!r}")
        return msg


def _no_array(_: Any) -> Any:
    raise ProtocolError(BAD_FIELDS, "an array: this link's frames are one map of plain values")
