"""Hostile-input helpers (issue 7 item 5): blocking framed clients, a witness
terminal, RSS readings, and hypothesis strategies for every link's frames.

Everything here speaks plain blocking sockets so that a hypothesis example is a
few syscalls against the real daemons, with a hard timeout on every read.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, cast

import msgpack
from hypothesis import strategies as st

from hsb import LINK_PROTOCOL
from hsb.wire import auth
from hsb.wire.framing import ERROR_CODES, Decoder, ProtocolError, encode

LEN = struct.Struct(">I")
MAX_FRAME = 1024 * 1024


def addr(s: str) -> tuple[str, int]:
    h, _, p = s.rpartition(":")
    return h, int(p)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


# ---------------------------------------------------------------- blocking framed connection
class Conn:
    """One TCP connection speaking the framing of SPEC §6.1 (blocking, every read bounded)."""

    def __init__(self, address: str, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(addr(address), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(64 * MAX_FRAME)
        self.pending: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []  # everything received, in order
        self.eof = False
        self.garbage = False  # the server sent bytes that are not frames
        self.nonce = b""

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))

    def send_raw(self, data: bytes) -> bool:
        """False when the server has already closed (reset) the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, deadline: float) -> bool:
        """Read once; False on EOF/reset or when the deadline passed."""
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        try:
            got = self.decoder.feed(data)
        except ProtocolError:
            self.garbage = True
            self.eof = True
            return False
        self.pending.extend(got)
        self.frames.extend(got)
        return True

    def recv(self, timeout: float = 3.0) -> dict[str, Any] | None:
        """The next frame, or None on EOF / timeout (see `eof`)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            if not self._fill(deadline):
                return None
        return self.pending.pop(0)

    def wait_for(self, pred: Any, timeout: float = 3.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.0, deadline - time.monotonic()))
            if m is None or pred(m):
                return m

    def finish(self, timeout: float = 3.0) -> bool:
        """Half-close our side and read until the server closes; True if it did in time."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return self.drain_until_closed(timeout)

    def drain_until_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def challenge(self, timeout: float = 3.0) -> dict[str, Any]:
        ch = self.recv(timeout)
        assert ch is not None and ch.get("t") == "challenge", f"expected a challenge, got {ch!r}"
        assert isinstance(ch.get("nonce"), bytes) and len(ch["nonce"]) == auth.NONCE_BYTES, ch
        self.nonce = ch["nonce"]
        return ch

    def authenticate(self, secret: bytes, link: str, name: str = "fuzz", timeout: float = 3.0, then: bytes = b"") -> bytes:
        """Answer the challenge (with `then` in the same write); return the auth frame's bytes (for replays)."""
        ch = self.challenge(timeout)
        raw = encode({"t": "auth", "name": name, "link": link, "mac": auth.answer(secret, ch["nonce"], link, name), "proto": LINK_PROTOCOL})
        self.sock.sendall(raw + then)
        ok = self.recv(timeout)
        assert ok is not None and ok.get("t") == "auth_ok", f"authentication on the {link} link failed: {ok!r}"
        return raw

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def errors(self) -> list[str]:
        return [str(m.get("code")) for m in self.frames if m.get("t") == "error"]


# ---------------------------------------------------------------- a real terminal that must keep being served
class Witness:
    """A terminal logged on for the whole test; `ping()` is one message round trip."""

    def __init__(self, terminal_addr: str, name: str, *, need_session: bool = True, need_reply: bool = True) -> None:
        self.addr = terminal_addr
        self.name = name
        self.need_reply = need_reply
        # ids only ever grow per terminal at the CP, also across connections: start above any earlier one
        self.next_id = time.time_ns() // 1000
        self.conn = self._logon(need_session)

    def _logon(self, need_session: bool) -> Conn:
        deadline = time.monotonic() + 10
        while True:
            c = Conn(self.addr)
            c.send({"t": "hello", "terminal": self.name})
            w = c.recv(5)
            if w is not None and w.get("t") == "welcome":
                break
            c.close()
            # a previous connection of the same name may not be gone yet
            if time.monotonic() > deadline:
                raise AssertionError(f"witness {self.name} could not log on: {w!r}")
            time.sleep(0.05)
        if need_session:
            s = c.wait_for(lambda m: m.get("t") == "session", 10)
            assert s is not None and s.get("state") == "open", f"witness {self.name}: no session: {s!r}"
        return c

    def ping(self, timeout: float = 5.0) -> float:
        """Send one message; wait for its ack (and its reply); return the seconds it took."""
        mid = self.next_id
        self.next_id += 1
        t0 = time.monotonic()
        self.conn.send({"t": "msg", "id": mid, "data": f"witness {mid}".encode()})
        want = "reply" if self.need_reply else "ack"
        m = self.conn.wait_for(lambda m: m.get("t") == want and m.get("id") == mid, timeout)
        assert m is not None, (
            f"witness {self.name}: no {want} for id {mid} within {timeout}s (eof={self.conn.eof}, last frames {self.conn.frames[-3:]})"
        )
        if want == "reply":
            assert m["data"] == f"witness {mid}".encode(), m
        return time.monotonic() - t0

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- hypothesis strategies
def frame(body: bytes) -> bytes:
    return LEN.pack(len(body)) + body


def packb(obj: Any) -> bytes:
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
HUGE_INTS = st.sampled_from([INT64_MIN, -1, 0, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, UINT64_MAX])
INTS = st.one_of(HUGE_INTS, st.integers(INT64_MIN, UINT64_MAX))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(),
    st.text(max_size=24),
    st.binary(max_size=24),
)
VALUES = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)

# MessagePack bodies that msgpack-python cannot or must not decode into something harmless
INVALID_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


def _str_raw(b: bytes) -> bytes:
    return bytes([0xA0 | len(b)]) + b  # fixstr header over arbitrary (invalid) bytes


@st.composite
def hostile_bodies(draw: st.DrawFn, types: Iterable[str]) -> bytes:
    """One frame body: deep nesting, invalid UTF-8, huge declared lengths, huge ints, odd types."""
    t = draw(st.sampled_from(sorted(types)))
    kind = draw(
        st.sampled_from(
            [
                "deep_array",
                "deep_map_field",
                "utf8_type",
                "utf8_key",
                "utf8_field",
                "huge_len",
                "huge_int_field",
                "ext",
                "non_map",
                "non_str_keys",
                "no_type",
                "type_not_str",
                "trailing",
                "truncated",
                "values",
            ]
        )
    )
    bad = draw(st.sampled_from(INVALID_UTF8))
    if kind == "deep_array":
        n = draw(st.integers(100, 100_000))
        return b"\x91" * n + b"\xc0"
    if kind == "deep_map_field":
        n = draw(st.integers(100, 50_000))
        return b"\x82" + packb("t") + packb(t) + packb("terminal") + b"\x81\xa1x" * n + b"\xc0"
    if kind == "utf8_type":
        return b"\x81" + packb("t") + _str_raw(bad)
    if kind == "utf8_key":
        return b"\x82" + packb("t") + packb(t) + _str_raw(bad) + b"\xc0"
    if kind == "utf8_field":
        key = draw(st.sampled_from(["terminal", "name", "role", "reason", "link", "kind", "data"]))
        return b"\x82" + packb("t") + packb(t) + packb(key) + _str_raw(bad)
    if kind == "huge_len":
        hdr = draw(st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"]))  # array32 map32 str32 bin32 ext32
        return b"\x82" + packb("t") + packb(t) + packb("data") + hdr + b"\xff\xff\xff\xff" + b"\x00" * draw(st.integers(0, 8))
    if kind == "huge_int_field":
        key = draw(st.sampled_from(["id", "epoch", "startup_id", "generation", "ring_next"]))
        raw = draw(st.sampled_from([b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, b"\xd3" + b"\xff" * 8, b"\xcb\x7f\xf8" + b"\x00" * 6]))
        return b"\x82" + packb("t") + packb(t) + packb(key) + raw
    if kind == "ext":
        code = draw(st.integers(-128, 127))
        payload = draw(st.sampled_from([1, 2, 4, 8, 16]))  # fixext sizes; -1 is the timestamp type
        hdr = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}[payload]
        ext = hdr + struct.pack("b", code) + draw(st.binary(min_size=payload, max_size=payload))
        return b"\x82" + packb("t") + packb(t) + packb("data") + ext
    if kind == "non_map":
        return packb(draw(VALUES.filter(lambda v: not isinstance(v, dict))))
    if kind == "non_str_keys":
        return b"\x82" + packb("t") + packb(t) + packb(draw(st.one_of(INTS, st.binary(max_size=4), st.none()))) + b"\xc0"
    if kind == "no_type":
        return packb(draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "t"), VALUES, max_size=3)))
    if kind == "type_not_str":
        return packb({"t": draw(VALUES.filter(lambda v: not isinstance(v, str)))})
    if kind == "trailing":
        return packb({"t": t}) + draw(st.binary(min_size=1, max_size=16))
    if kind == "truncated":
        body = packb({"t": t, "x": draw(st.binary(min_size=4, max_size=64))})
        return body[: draw(st.integers(1, len(body) - 1))]
    return packb(
        {"t": draw(st.one_of(st.sampled_from(sorted(types)), st.text(max_size=12))), **draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=4))}
    )


@st.composite
def hostile_streams(draw: Any, types: Iterable[str]) -> list[bytes]:
    """What a hostile client writes: raw bytes, or frames with broken lengths or broken bodies."""
    types = list(types)
    kind = draw(st.sampled_from(["raw", "raw", "len0", "too_large", "partial", "frames", "frames", "short_len"]))
    if kind == "raw":
        return [draw(st.binary(min_size=1, max_size=512))]
    if kind == "len0":
        return [LEN.pack(0) + draw(st.binary(max_size=16))]
    if kind == "too_large":
        return [LEN.pack(draw(st.integers(MAX_FRAME + 1, 2**32 - 1))) + draw(st.binary(max_size=64))]
    if kind == "partial":
        body = draw(hostile_bodies(types))
        declared = draw(st.integers(len(body) + 1, MAX_FRAME))
        return [LEN.pack(declared) + body]
    if kind == "short_len":
        body = draw(hostile_bodies(types))
        return [LEN.pack(draw(st.integers(1, max(1, len(body))))) + body]
    n = draw(st.integers(1, 3))
    return [frame(draw(hostile_bodies(types))) for _ in range(n)]


# Field types each link expects (docs/protocol.md; peer link fields from hsb/host/ha.py).
IntT, StrT, BytesT, BoolT, MapT = int, str, bytes, bool, dict
DATA = (bytes, str)
TERMINAL_FIELDS: dict[str, dict[str, Any]] = {"hello": {"terminal": StrT}, "msg": {"id": IntT, "data": DATA}, "bye": {}}
AUTH_FIELDS: dict[str, dict[str, Any]] = {"auth": {"name": StrT, "link": StrT, "mac": BytesT}}
HOST_FIELDS: dict[str, dict[str, Any]] = {
    "register": {"role": StrT, "startup_id": IntT},
    "hb": {},
    "open": {"terminal": StrT, "kind": StrT, "attrs": MapT, "epoch": IntT},
    "refuse": {"terminal": StrT, "reason": StrT, "epoch": IntT},
    "close": {"terminal": StrT, "kind": StrT, "epoch": IntT},
    "reply": {"terminal": StrT, "id": IntT, "data": DATA, "epoch": IntT},
    "stopping": {"epoch": IntT},
    "release": {"epoch": IntT},
    "handover": {"epoch": IntT},
    "switchover": {"reason": StrT, "planned": BoolT},
}
CP_ADMIN_FIELDS: dict[str, dict[str, Any]] = {"status": {}, "sessions": {}}
HOST_ADMIN_FIELDS: dict[str, dict[str, Any]] = {"status": {}, "promote": {}, "switchover": {}}
NONE = type(None)
PEER_FIELDS: dict[str, dict[str, Any]] = {  # docs/protocol.md §5
    "peer_hello": {
        "name": StrT,
        "role": StrT,
        "state": StrT,
        "instance": StrT,
        "partner": (StrT, NONE),
        "startup_id": (IntT, NONE),
        "ring_next": (IntT, NONE),
        "ring_write_failing": (StrT, NONE),
    },
    "hb": {"role": StrT, "state": StrT, "instance": StrT, "ring_next": (IntT, NONE), "ring_write_failing": (StrT, NONE)},
    "active_startup": {"name": StrT, "instance": StrT},
    "standby_startup": {"startup_id": IntT, "name": StrT},
    "batch_write_complete": {"startup_id": IntT, "generation": IntT},
    "file_mismatch": {"startup_id": IntT, "found": (IntT, NONE), "path": StrT},
    "standby_ready": {"startup_id": IntT, "instance": StrT},
    "resync_request": {"startup_id": IntT, "reason": StrT},
    "active_stopping": {"name": StrT},
}

PLAUSIBLE_STR = st.sampled_from(["T00002", "T00003", "NOPE", "host-a", "host-b", "active", "standby", "established", "", "x" * 300])


def _right(typ: Any) -> st.SearchStrategy[Any]:
    if isinstance(typ, tuple) and typ != DATA:
        return st.one_of(*(_right(t) for t in typ))
    if typ is NONE:
        return st.none()
    if typ is IntT:
        return INTS
    if typ is StrT:
        return PLAUSIBLE_STR | st.text(max_size=16)
    if typ is BytesT:
        return st.binary(max_size=40)
    if typ is BoolT:
        return st.booleans()
    if typ is MapT:
        return st.dictionaries(st.text(max_size=6), SCALARS, max_size=3)
    return st.binary(max_size=16) | st.text(max_size=16)


def _is(v: Any, typ: Any) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(v, bool) and IntT in types and BoolT not in types:
        return False
    return isinstance(v, types)


def _wrong(typ: Any) -> st.SearchStrategy[Any]:
    return VALUES.filter(lambda v: not _is(v, typ))


@st.composite
def wrong_typed_frames(draw: Any, spec: dict[str, dict[str, Any]], types: Iterable[str] | None = None) -> dict[str, Any]:
    """A frame of a known type whose fields are the right names with (at least one) wrong type or missing."""
    t = draw(st.sampled_from(sorted(types if types is not None else spec)))
    fields = spec[t]
    msg: dict[str, Any] = {"t": t}
    names = sorted(fields)
    if names:
        broken = draw(st.sampled_from(names))
        for name in names:
            if name == broken:
                if draw(st.integers(0, 4)) == 0:
                    continue  # missing
                msg[name] = draw(_wrong(fields[name]))
            else:
                how = draw(st.integers(0, 3))
                if how == 0:
                    continue
                msg[name] = draw(_wrong(fields[name])) if how == 1 else draw(_right(fields[name]))
    else:
        msg.update(draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "t"), VALUES, min_size=1, max_size=3)))
    return msg


def check_error_codes(codes: Iterable[str], allowed: set[str], where: str) -> None:
    bad = [c for c in codes if c not in allowed]
    assert not bad, f"{where}: error codes outside the documented set: {bad}"


FRAMING_CODES = set(ERROR_CODES) | {"bad_fields", "idle_timeout"}
TERMINAL_CODES = FRAMING_CODES | {"unknown_terminal", "already_connected", "bad_hello"}
AUTH_CODES = FRAMING_CODES | {"auth_required", "auth_failed"}
# docs/protocol.md §3: register errors, not_registered, fenced (epoch check), not_active (reply from a non-active)
HOST_CODES = AUTH_CODES | {"active_exists", "standby_exists", "bad_role", "fenced", "not_registered", "not_active"}
