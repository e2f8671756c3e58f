"""Tickle ACKs: terminals of a lost CP machine learn at once that their connections are dead.

When keepalived moves the CP's address to the second machine, the terminals' connections to
the first one do not break: no reset comes from a machine that is cut off, so each terminal
notices only on its next send or its next TCP keepalive probe (a second or more). CTDB, which
moves Samba's addresses between cluster nodes, solves this with a "tickle ACK", and so does
this module:

- The serving CP keeps the four addresses of every terminal connection (the *tickle list*) and
  writes them, when they changed and at most once a second, to `tickle-<generation>` in the
  journal directory that both CP machines share (off the event loop; not fsynced: a stale list
  only tickles fewer terminals).
- A CP that takes the journal over reads the newest list of an older generation and, once it
  listens, sends each of those connections (unless that list was written in this machine's own
  network namespace: its kernel already reset them when their process died) a bare TCP ACK from the CP's address (now its own)
  with sequence number 0, through a raw socket. The terminal's kernel finds the segment outside
  its window and answers with an ACK of its own, which reaches this machine; the kernel here
  has no such connection and answers that with a reset. The terminal sees the reset and
  reconnects at once, instead of a keepalive interval later.

Sending needs CAP_NET_RAW (the systemd unit grants it); without it the CP says so once and the
terminals find out by keepalive, as before. A tickle to a connection that is alive (split
brain, a terminal already back on the same ports) is a duplicate ACK and changes nothing.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgpack
import structlog

from hsb.worker import Worker

log = structlog.get_logger("hsb.cp")

_PACK = msgpack.Packer().pack  # one entry: [cp address, cp port, terminal address, terminal port, name]
WRITE_EVERY_S = 1.0  # a changed list is written at most this often
PREFIX = "tickle-"
WINDOW = 1234  # the window field of a tickle (any value will do; CTDB uses this one)
TICKLES_PER_S = 20_000.0  # about four times the logons one CP takes a second here: no burst, no wait
TICKLE_BATCH = 256

# the CP's address and port, the terminal's address and port, the terminal's name ("": no hello yet)
Conn = tuple[str, int, str, int, str]
RESEND_AFTER_S = (1.0, 2.0)  # a tickle or its answer may be lost: again to those not back by then


def list_name(gen: int) -> str:
    return f"{PREFIX}{gen:08d}"


def _gen_of(name: str) -> int | None:
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


class TickleList:
    """The terminal connections this CP serves, written for the CP that may take over from it."""

    def __init__(self, d: Path, generation: int) -> None:
        self.dir = d
        self.gen = generation
        # each connection's entry MessagePack-encoded once, when it changes: a list of 100,000 is
        # then joined (a few ms), not encoded at each write (~40 ms holding the GIL, which is the
        # event loop's too, even on the writer's thread)
        self.conns: dict[object, bytes] = {}
        self.changed = True  # an empty list at once: the next CP must not tickle an older one again
        self.last_write = 0.0
        self.writing = False
        self.written = 0  # lists written
        self.listed = 0  # connections in the last list written
        self.write_error: str | None = None
        self._worker: Worker | None = None

    def opened(self, key: object, local: Any, peer: Any) -> None:
        if isinstance(local, tuple) and isinstance(peer, tuple) and len(local) >= 2 and len(peer) >= 2:
            self.conns[key] = _PACK((local[0], local[1], peer[0], peer[1], ""))
            self.changed = True

    def named(self, key: object, name: str) -> None:
        """The connection's terminal said who it is: a tickle not answered can then be resent."""
        c = self.conns.get(key)
        if c is not None:  # (its addresses from its entry: nothing else is kept per connection)
            self.conns[key] = _PACK((*msgpack.unpackb(c)[:4], name))
            self.changed = True

    def closed(self, key: object) -> None:
        if self.conns.pop(key, None) is not None:
            self.changed = True

    def tick(self, now: float) -> None:
        """From the CP's tick: write the list if it changed and the last write is old enough."""
        if not self.changed or self.writing or now - self.last_write < WRITE_EVERY_S:
            return
        self.changed = False
        self.last_write = now
        self.writing = True
        conns = list(self.conns.values())  # a copy: the loop goes on changing the dict
        if self._worker is None:
            self._worker = Worker("hsb-tickle")
        self._worker.call(lambda: self._write(conns), self._written)

    def _write(self, conns: list[bytes]) -> int:
        path = self.dir / list_name(self.gen)
        tmp = path.with_name(path.name + ".tmp")
        head = msgpack.packb({"v": 1, "generation": self.gen, "at": time.time(), "origin": origin()})
        # the same document as packb({..., "conns": [...]}) would make: one more key, its array
        # (32-bit length) of the entries already encoded
        with open(tmp, "wb") as fh:
            fh.write(bytes([head[0] + 1]) + head[1:] + msgpack.packb("conns") + b"\xdd" + len(conns).to_bytes(4, "big"))
            fh.write(b"".join(conns))
        os.replace(tmp, path)
        return len(conns)

    def _written(self, listed: int | None, exc: BaseException | None) -> None:
        self.writing = False
        if exc is not None:
            self.changed = True  # tried again next time
            if self.write_error is None:
                log.warning("tickle_list_write_failed", dir=str(self.dir), error=str(exc))
            self.write_error = str(exc)
            return
        self.write_error = None
        self.written += 1
        self.listed = listed or 0

    def status(self) -> dict[str, Any]:
        return {"connections": len(self.conns), "listed": self.listed, "lists_written": self.written, "error": self.write_error}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()


@functools.cache
def origin() -> str:
    """This kernel and network namespace: where the connections of a dead process are reset."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return ""


def previous_list(d: Path, own: int) -> tuple[int, list[Conn], bool]:
    """The newest tickle list of a generation below `own` (0 and [] if none), whether it was
    written here (this kernel and network namespace), and delete the older lists (and any
    half-written one). A damaged list is deleted with a warning, one that cannot be read now is
    left alone: either only tickles."""
    names = os.listdir(d)
    for n in names:
        if n.endswith(".tmp") and (g := _gen_of(n[:-4])) is not None and g < own:
            _unlink(d / n)  # its writer died between writing and renaming it
    found = sorted(((g, n) for n in names if (g := _gen_of(n)) is not None and g < own), reverse=True)
    out: tuple[int, list[Conn], bool] = (0, [], False)
    for gen, name in found:
        if out[0]:
            _unlink(d / name)
            continue
        try:
            raw = (d / name).read_bytes()
        except OSError as exc:  # ESTALE on NFS while it is being replaced, say: not damage
            log.warning("tickle_list_unreadable", file=str(d / name), error=str(exc))
            continue
        try:
            doc = msgpack.unpackb(raw)
            conns = [c for c in (_entry(e) for e in doc["conns"]) if c is not None]
            here = bool(doc.get("origin")) and doc.get("origin") == origin()
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            log.warning("tickle_list_unreadable", file=str(d / name), error=str(exc) or type(exc).__name__)
            _unlink(d / name)
            continue
        out = (gen, conns, here)
    return out


def _entry(e: Any) -> Conn | None:
    """One connection of a list, checked (addresses of one family, ports 1-65535), or None."""
    try:
        src, sport, dst, dport = _plain(str(e[0])), int(e[1]), _plain(str(e[2])), int(e[3])
        name = str(e[4]) if len(e) > 4 else ""
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        socket.inet_pton(fam, src)
        socket.inet_pton(fam, dst)
    except (OSError, ValueError, TypeError, IndexError, OverflowError):
        return None
    return (src, sport, dst, dport, name) if 0 < sport < 65536 and 0 < dport < 65536 else None


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:  # best effort: a list left behind only tickles
        pass


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


_HEAD = struct.Struct("!HHIIBBHHH")


@functools.lru_cache(maxsize=4096)
def _pseudo_sum(src: str, dst: str) -> int:
    """The one's complement sum of the pseudo header (addresses, protocol, TCP length 20)."""
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    packed = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
    tail = struct.pack("!I3xB", 20, socket.IPPROTO_TCP) if v6 else struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    data = packed + tail
    return int(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def tickle_segment(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A 20-byte TCP header: ACK, sequence and acknowledgement 0, its checksum over the pseudo
    header of `src` and `dst` (IPv4 or IPv6)."""
    s = _pseudo_sum(src, dst) + sport + dport + (5 << 12 | 0x10) + WINDOW  # plus the header's nonzero 16-bit words
    return _HEAD.pack(sport, dport, 0, 0, 5 << 4, 0x10, WINDOW, ~_fold(s) & 0xFFFF, 0)


def raw_socket(family: int) -> socket.socket:
    return socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)


def send_tickles(conns: Iterable[Conn], per_s: float = TICKLES_PER_S) -> tuple[int, int, str | None]:
    """Send a tickle ACK to each connection, from its CP address, `per_s` a second at most (the
    terminals reconnect as fast as they are tickled: a burst would overflow the listen
    backlog); (sent, failed, why the first failure). Blocking: run it off the event loop."""
    socks: dict[str, socket.socket | None] = {}
    sent = failed = 0
    why: str | None = None
    t0 = time.monotonic()
    try:
        for k, (src, sport, dst, dport, *_) in enumerate(conns):
            if k and k % TICKLE_BATCH == 0 and (ahead := t0 + k / per_s - time.monotonic()) > 0:
                time.sleep(ahead)
            if src in socks:
                s = socks[src]
            else:
                s = None
                try:
                    s = raw_socket(socket.AF_INET6 if ":" in src else socket.AF_INET)
                    s.bind((src, 0))  # the source of its packets: the CP's address, now this machine's
                except OSError as exc:
                    if s is not None:
                        s.close()
                        s = None
                    why = why or f"raw socket from {src}: {exc}"
                socks[src] = s
            if s is None:
                failed += 1
                continue
            try:
                s.sendto(tickle_segment(src, sport, dst, dport), (dst, 0))
                sent += 1
            except (OSError, ValueError, struct.error) as exc:
                failed += 1
                why = why or f"to {dst}:{dport}: {exc}"
    finally:
        for s in socks.values():
            if s is not None:
                s.close()
    return sent, failed, why


def not_back(conns: list[Conn], terms: Mapping[str, Any]) -> list[Conn]:
    """The connections of terminals of this CP that have not connected again (by name; one
    without a name, or a name this CP does not know, is not tickled again)."""
    out = []
    for c in conns:
        t = terms.get(c[4]) if c[4] else None
        if t is not None and t.conn is None:
            out.append(c)
    return out


def _plain(addr: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) as IPv4."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


__all__ = ["TickleList", "previous_list", "send_tickles", "tickle_segment", "list_name", "not_back", "RESEND_AFTER_S"]
