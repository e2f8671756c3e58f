"""A thin asyncio.Protocol around the sans-IO `Decoder`.

`FramedProtocol` owns one connection: it decodes frames, dispatches each to the
handler named in the subclass's table, and turns a protocol error into an
error frame, a log line and a close of *this* connection only (SPEC §6.1).
It also enforces the idle timeout (a peer that sends a partial frame and
stalls, or never authenticates, is dropped) and write-side back-pressure.
The server side of TLS, where a listener has it, is hsb.wire.conn_tls's mixin
(`ServerSideTLS`); its bytes pass through it in `data_received` and `_write`.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import socket
import ssl
from collections.abc import Collection
from typing import Any, ClassVar

import structlog

from hsb.ops.limits import fd_room, fd_watch
from hsb.wire.conn_tls import ServerSideTLS
from hsb.wire.framing import DEFAULT_MAX_FRAME, FLUSH_AT, LOGIN_MAX, Decoder, ProtocolError, encode
from hsb.wire.handshakes import HANDSHAKES
from hsb.wire.tlsio import ServerTLS, TLSFailed

log = structlog.get_logger("hsb.wire")

# Protocol errors seen by this process, by (link, code): status and /metrics read it.
PROTOCOL_ERRORS: collections.Counter[tuple[str, str]] = collections.Counter()
# Closed connections dropped with bytes unsent (their peer read nothing for CLOSE_LINGER_S), by link.
CONNECTIONS_DROPPED: collections.Counter[str] = collections.Counter()

CLOSE_LINGER_S = 5.0  # seconds a closed connection may take to send what is queued to it
FRAMES_PER_TURN = 256  # frames handled per loop iteration for one connection before it yields

UNREAD_MAX = 16 << 20  # bytes of a gone connection's receive queue read for its last frames (the kernel's holds less)
KEEPALIVE_PROBES = 3  # unanswered keepalive probes, one a second, before the kernel drops the connection


def tcp_keepalive(sock: Any, idle: float) -> None:
    """Let the kernel find a dead peer: a probe after `idle` seconds of silence, then one a second;
    KEEPALIVE_PROBES unanswered close the connection. A peer whose machine forgot the connection
    (crashed, or its reset lost in a partition) answers the first probe with a reset. Without this
    such a half-open connection stays forever. No TCP_USER_TIMEOUT: since Linux 5.10 it also
    aborts a live peer that reads nothing for that long (a zero window), and a terminal that is
    only slow must not lose what was written to it.

    Set on a listening socket, the connections it accepts inherit it (Linux): no system calls
    per connection in a logon storm."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    secs = max(1, round(idle))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's keepalive timing applies
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def probe_now(sock: Any) -> None:
    """Have the kernel probe this connection's peer now: its TCP_KEEPIDLE set to 1 s, which Linux
    applies at once to a connection idle that long (a probe goes out), then a probe a second
    (tcp_keepalive's interval). A peer whose machine forgot the connection (rebooted, its reset
    lost on the way, a NAT that dropped its state) answers with a reset; a silent one is dropped
    after KEEPALIVE_PROBES unanswered probes; a live one answers and nothing changes (but a probe a
    second while it stays idle). Nothing where it cannot be asked (not TCP, not Linux)."""
    try:
        tcp_keepalive(sock, 1)
    except OSError:
        pass  # (the socket itself gone: its end is on its way)


# TCP states (Linux's tcp_states.h) in which the peer has gone: it reset the connection, or
# keepalive gave up on it (CLOSE), or it closed its side (CLOSE_WAIT: a terminal's link is not
# half-open by design, so its FIN is its leaving)
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


def peer_gone(sock: Any) -> bool:
    """Whether the peer of a connected TCP socket is gone, asked of the kernel: for a connection
    this side does not read (back-pressure), whose reset or end the event loop therefore never
    sees. False where it cannot be told (not TCP, not Linux)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # a reset, or keepalive's timeout
            return True
        if not hasattr(socket, "TCP_INFO"):
            return False
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT)
    except OSError as exc:
        return exc.errno in (errno.EBADF, errno.ENOTCONN)  # the socket itself is gone


# what a handler raises on a field missing, of the wrong type or shape (nested ~1,000 deep: str()
# of it recurses too far): that connection's protocol error, never a traceback
def out_of_descriptors(transport: asyncio.BaseTransport, link: str, peer: str) -> bool:
    """Whether a connection just accepted holds one of the daemon's last descriptors
    (hsb.ops.limits.fd_room, which says it): then counted as refused, for its caller to close
    unanswered. The framed links and the HTTP listener alike."""
    sock = transport.get_extra_info("socket")
    if sock is None or fd_room(sock.fileno(), link, peer):
        return False
    PROTOCOL_ERRORS[(link, "connection_refused")] += 1
    return True


FIELD_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError)


class _Open:
    """This process's framed connections open now (hsb.ops.limits.fd_watch). An instance's
    attribute, not a class's: writing a class attribute at every connection invalidates the
    interpreter's attribute caches for the class and its subclasses (the CP's terminal links),
    which cost the CP ~20 % more CPU in a reconnect storm of 10,000 terminals."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


OPEN = _Open()


class FramedProtocol(ServerSideTLS, asyncio.Protocol):
    """Base class: subclasses set `link` and fill `dispatch` with {type: method name}."""

    link: ClassVar[str] = "link"
    dispatch: ClassVar[dict[str, str]] = {}
    # every frame one map of plain values (hsb.wire.framing.Decoder's `flat`): a terminal's
    flat_frames: ClassVar[bool] = False
    # nothing decoded after the first frame until it is accepted (Decoder's `hold`; then
    # `release_held`): the authenticated links' and the terminals'
    hold_until_vouched: ClassVar[bool] = False
    # the bytes kept behind that frame meanwhile (Decoder's `held_max`; -1: within the first
    # frame's bound, for clients that wait for its answer)
    held_max: ClassVar[int | None] = -1
    # its TLS handshake goes ahead of the terminals' queued ones (hsb.wire.handshakes): the
    # authenticated links', few and the pair's own (a host's must not time out behind a storm)
    tls_first: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        missing = sorted(name for name in cls.dispatch.values() if not callable(getattr(cls, name, None)))
        if missing:  # found when the class is made, not when such a frame first arrives
            raise TypeError(f"{cls.__name__}.dispatch names no method {missing}")

    def __init__(
        self,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        idle_timeout: float | None = None,
        known_types: Collection[str] | None = None,
        partial_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        tls_timeout: float = 5.0,
    ) -> None:
        types = known_types if known_types is not None else self.dispatch.keys()
        # TLS run here, not by the loop (hsb.wire.tlsio): a failed handshake is then ours to log
        self._tls = ServerTLS(tls) if tls is not None else None
        self._tls_timeout = tls_timeout
        self._tls_waiting = False  # its handshake queued (hsb.wire.handshakes): not read meanwhile
        # its first frame (hello, auth) within LOGIN_MAX: unvouched connections cannot make it
        # buffer max_frame bytes each
        self.decoder = Decoder(max_frame, types, first_max=LOGIN_MAX, flat=self.flat_frames, hold=self.hold_until_vouched, held_max=self.held_max)
        self.transport: asyncio.Transport | None = None
        self.peer: str = "?"
        self.peername: Any = None  # the transport's, as it gave it
        self.closed = False
        self.closed_here = False  # closed by this side (close/abort), not by the peer
        self.idle_timeout = idle_timeout
        self.partial_timeout = partial_timeout  # a frame begun and stalled, while idle_timeout is None
        self._yielding = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._late: asyncio.TimerHandle | None = None  # send_soon: the write if no other frame comes first
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None  # fires at _idle_at; closes at _idle_due
        self._idle_at = self._idle_due = self._idle_t = 0.0
        self._linger_handle: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.frozen = False  # freeze(): read nothing more, whatever back-pressure says
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._loop = asyncio.get_event_loop()
        self._counted = False  # counted in OPEN (connection_made), until connection_lost

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peername = pn = transport.get_extra_info("peername")  # asked once: a system call on uvloop
        if isinstance(pn, tuple) and len(pn) >= 2:
            self.peer = f"{pn[0]}:{pn[1]}"
        OPEN.n += 1
        self._counted = True
        if fd_watch(OPEN.n) and out_of_descriptors(transport, self.link, self.peer):  # (near the limit only: a cost)
            self.abort()  # its descriptor is the daemon's last few: neither a frame nor on_open
            return
        if self._tls is not None:  # the link begins once the handshake is done
            self._deadline_handle = self._loop.call_later(self._tls_timeout, self._tls_refused, f"no TLS handshake within {self._tls_timeout:g} s")
            return
        self._arm_idle()
        self.on_open()

    def _log_tls_refused(self, reason: str) -> None:
        """One line per refused handshake, naming the peer and why; counted by link."""
        log.warning("tls_refused", link=self.link, peer=self.peer, reason=reason)
        PROTOCOL_ERRORS[(self.link, "tls_refused")] += 1

    def _held_by_writes(self) -> bool:
        """Not read because it does not read what we write (links that read on under write
        pressure, the host links and the peer link, are never held so: their frames must flow)."""
        return self.write_paused and not self.read_under_write_pressure

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        t = self._tls
        if t is not None:
            if not t.done and (self._tls_waiting or not HANDSHAKES.admit(self, self._loop, self.tls_first)):
                t.keep(data)  # its handshake waits for its turn (hsb.wire.handshakes), unread meanwhile
                if not self._tls_waiting and self.transport is not None:
                    self._tls_waiting = True
                    self.transport.pause_reading()
                return
            self._tls_in(t, data)
            return
        self._frames_in(data)

    def _frames_in(self, data: bytes) -> None:
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self.refuse_after_frames_before(exc)
            return
        self._arm_idle()
        self._backlog.extend(msgs)
        self._drain_backlog()

    def _drain_backlog(self, limit: int | None = FRAMES_PER_TURN) -> None:
        """Handle frames already read, at most `limit` per loop iteration: with more waiting, stop
        reading this connection and go on at the next iteration, so one busy peer cannot starve the
        others (uvloop reads a busy socket up to 32 times per poll). Frames already read stay
        unprocessed while reading is paused by back-pressure (back-pressure is exact)."""
        bl = self._backlog
        n = 0
        # a peer that does not read our answers (write_paused) gets none made for the frames it
        # sent ahead either, on links that stop reading it (resume_writing goes on with them)
        held_by_writes = not self.read_under_write_pressure
        while bl and not self.reading_paused and not self.closed and not (held_by_writes and self.write_paused):
            if limit is not None and n >= limit:
                if not self._yielding and self.transport is not None:
                    self._yielding = True
                    self.transport.pause_reading()
                    self._loop.call_soon(self._next_turn)
                return
            try:
                self._handle(bl.popleft())
            except ProtocolError as exc:  # (a subclass's _handle outside the dispatch's catch: one line, this link only)
                self.protocol_error(exc)
            n += 1
        if self._tls is not None and self._tls.peer_closed:  # (a plaintext link: nothing to look at)
            self._tls_eof_if_due()

    def refuse_after_frames_before(self, exc: ProtocolError) -> None:
        """A read that decoded frames ahead of a bad one: those are taken, then the link is
        refused for the bad one (unless one of them closed it)."""
        self._backlog.extend(exc.before)
        self._drain_backlog(limit=None)
        if not self.closed:
            self.protocol_error(exc)

    def release_held(self) -> None:
        """The first frame was accepted (`hold_until_vouched`): what came behind it, kept as bytes,
        is decoded now and waits in the backlog (taken by the drain that handles that frame, if
        any); frames ahead of a bad one are taken first, as on any read."""
        self.decoder.first_done()
        try:
            self._backlog.extend(self.decoder.feed(b""))
        except ProtocolError as exc:
            self.refuse_after_frames_before(exc)

    def _may_read(self) -> bool:
        """Nothing of ours holds its reading off: not paused, not yielding a turn, no writes held."""
        return self.transport is not None and not self.closed and not self.reading_paused and not self._yielding and not self._held_by_writes()

    def _next_turn(self) -> None:
        self._yielding = False
        self._drain_backlog()
        if self._may_read():
            self.transport.resume_reading()  # type: ignore[union-attr]  # (_may_read: it is there)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            OPEN.n -= 1
        if self._tls is not None and not self._tls.done and not self.closed:
            self._tls_gave_up()
        self.closed = True
        self.clear_deadline()
        if self._late is not None:
            self._late.cancel()
            self._late = None
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.on_lost(exc)
        self._backlog.clear()
        self._out.clear()
        self.decoder = Decoder(1)

    # A peer that does not read what we send it is not read either (a client pipelining requests
    # would otherwise grow our write buffer without bound); links whose frames must keep flowing
    # while we write a burst (hosts, the peer link) read on.
    read_under_write_pressure = True

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.read_under_write_pressure and self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._backlog and not self._yielding and not self.closed:
            self._drain_backlog()  # the frames read ahead while our answers waited
        # a turn that yielded while writes were paused left reading off: turn it back on
        if self.transport is not None and not self.closed and not self.reading_paused and not self._yielding and not self.write_paused:
            self.transport.resume_reading()

    write_paused = False

    # -- helpers for subclasses -------------------------------------------
    def _handle(self, msg: dict[str, Any]) -> None:
        name = self.dispatch.get(msg["t"])  # by name, per message: no table of bound methods per connection
        if name is None:
            self.protocol_error(ProtocolError("unknown_type", f"unknown message type {str(msg['t'])[:40]!r}"))
            return
        try:
            getattr(self, name)(msg)
        except ProtocolError as exc:
            self.protocol_error(exc)
        except FIELD_ERRORS as exc:  # (else a traceback would leave the connection unread and open)
            self.protocol_error(ProtocolError("bad_fields", f"{str(msg['t'])[:40]}: {type(exc).__name__}: {str(exc)[:150]}"))

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(encode(msg))

    def send_raw(self, data: bytes) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write, or every
        FLUSH_AT frames. One syscall per frame was most of the CP's CPU: a message costs
        three frames.
        """
        if self.transport is None or self.closed:
            return
        self._out.append(data)
        if len(self._out) >= FLUSH_AT:
            self.flush()  # keep the next hop busy: a whole turn's frames in one write made a convoy
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def send_soon(self, msg: dict[str, Any], within: float) -> None:
        """Queue a frame that goes out with the next frame to this peer, or alone `within` seconds
        after the first frame queued since the last write if none comes (a later, shorter
        `within` does not hurry it: the one caller passes one constant): one write instead of two
        when an answer is about to follow (the CP's welcome, then the session's opening, in a
        logon storm of thousands)."""
        if self.transport is None or self.closed:
            return
        self._out.append(encode(msg))
        if not self._flush_scheduled and self._late is None:
            self._late = self._loop.call_later(within, self._late_flush)

    def _late_flush(self) -> None:
        self._late = None
        if self._out and not self._flush_scheduled:
            self.flush()

    def write_now(self, data: bytes) -> None:
        """Write a frame at once, after anything already queued (one write either way)."""
        if self.transport is None or self.closed:
            return
        if self._out:
            self._out.append(data)
            self.flush()
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        t = self._tls
        if t is not None:
            data = t.wrap(data)
            if t.failed:  # its TLS broke (a record that did not decrypt): nothing can go out on it
                self.abort()
                return
        assert self.transport is not None
        self.transport.write(data)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._late is not None:
            self._late.cancel()
            self._late = None
        if self._out and self.transport is not None and not self.closed:
            self._write(self._out[0] if len(self._out) == 1 else b"".join(self._out))
        self._out.clear()

    def protocol_error(self, exc: ProtocolError) -> None:
        log.warning("protocol_error", link=self.link, peer=self.peer, code=exc.code, msg=exc.msg)
        PROTOCOL_ERRORS[(self.link, exc.code)] += 1
        self.close_with_error(exc.code, exc.msg)

    # the code of the error frame this side closed the link with (close_with_error), if any
    close_code: str | None = None

    def close_with_error(self, code: str, msg: str, **fields: Any) -> None:
        """Send an `error` frame (with `fields` beside code and msg) and close the link."""
        if not self.closed:
            self.close_code = code
        self.send({"t": "error", "code": code, "msg": msg, **fields})
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if self._tls is not None and self._tls.failed:
                # its TLS broke (a record that did not decrypt, found by unread_has): nothing can
                # be sent on it, an error frame neither, and a close would wait for nothing
                self.abort()
                return
            self.flush()
            if self.closed:  # (the flush found its TLS broken and dropped it)
                return
            self.closed = True
            self.closed_here = True
            if self._tls is not None and self._tls.done:
                # our close_notify: the peer's TLS then reads a clean end, not a truncation
                # (OpenSSL 3 reports an EOF without it as an error, the frames before it aside)
                self.transport.write(self._tls.shutdown())
            self.transport.close()
            left = self.transport.get_write_buffer_size()
            if left:
                # a close waits for the queued bytes to go out, which a peer that stopped
                # reading never allows: the connection (and its buffer) would stay for good
                self._linger_handle = self._loop.call_later(CLOSE_LINGER_S, self._linger_check, left)

    def _linger_check(self, before: int) -> None:
        """Closed with bytes queued: drop the connection once the peer has taken none of them
        for CLOSE_LINGER_S (a slow reader that is still reading keeps it)."""
        self._linger_handle = None
        tr = self.transport
        if tr is None:
            return
        left = tr.get_write_buffer_size()
        if not left:
            return  # all sent: the transport closes by itself
        if left < before:
            self._linger_handle = self._loop.call_later(CLOSE_LINGER_S, self._linger_check, left)
            return
        CONNECTIONS_DROPPED[self.link] += 1
        log.warning(
            "connection_dropped",
            link=self.link,
            peer=self.peer,
            unsent_bytes=left,
            reason=f"closed, and nothing it was sent was read for {CLOSE_LINGER_S:g}s",
        )
        tr.abort()

    def probe_peer(self) -> None:
        """Ask the kernel to probe this connection's peer now (`probe_now`): a dead one is dropped
        within a round trip (a reset) or a few seconds (silence), not after the keepalive's idle time."""
        tr = self.transport
        if not self.closed and tr is not None:
            probe_now(tr.get_extra_info("socket"))

    def peer_gone(self) -> bool:
        """The peer reset or closed this connection, although nothing here has read that yet
        (reading paused: hsb.wire.conn.peer_gone); True once closed."""
        tr = self.transport
        if self.closed or tr is None or tr.is_closing():  # (closing: a failed write, its connection_lost to come)
            return True
        return peer_gone(tr.get_extra_info("socket"))

    def unread_has(self, t: str) -> bool:
        """Whether the frames its peer sent that this side never read (reading paused) include
        one of type `t`: read from the kernel's receive queue, which keeps them after the peer's
        close or reset, and found without decoding the others (megabytes of small frames took
        over a second of the loop to decode, for one `bye`). For a connection about to be
        dropped (`peer_gone`): the bytes are taken."""
        tr = self.transport
        sock = tr.get_extra_info("socket") if tr is not None else None
        if sock is None or self.closed:
            return False
        chunks: list[bytes] = []
        size = 0
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as dup:
                dup.setblocking(False)
                while size < UNREAD_MAX and (chunk := dup.recv(65536)):
                    chunks.append(chunk)
                    size += len(chunk)
        except OSError:  # nothing more (EAGAIN), or the reset after what was queued
            pass
        data = b"".join(chunks)
        try:
            if self._tls is not None:
                data = self._tls.feed(data)[0]
        except TLSFailed as exc:  # (its close that follows drops it: nothing can be sent on it now)
            self._log_tls_refused(exc.reason)
            return False
        return self.decoder.has_type(data, t)

    def abort(self) -> None:
        if self.transport is not None:
            self.closed_here = self.closed_here or not self.closed
            self.closed = True
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def freeze(self) -> None:
        """Read nothing more from now on (a stop: nothing new is taken); what was read is left."""
        self.frozen = True
        self.pause_reading()

    def resume_reading(self) -> None:
        if self.frozen:
            return
        if self.transport is not None and not self.closed and self.reading_paused:
            self.reading_paused = False
            if not self._held_by_writes() and not self._yielding:
                self.transport.resume_reading()
            if self._backlog and not self._yielding:
                self._loop.call_soon(self._drain_backlog)

    def set_deadline(self, seconds: float) -> None:
        """Close with idle_timeout `seconds` from now unless clear_deadline() comes first
        (authentication / hello: unlike the idle timer, arriving bytes do not extend it)."""
        self.clear_deadline()
        self._deadline_handle = self._loop.call_later(seconds, self._deadline_passed, seconds)

    def clear_deadline(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None

    def _deadline_passed(self, seconds: float) -> None:
        self._deadline_handle = None
        if not self.closed:
            log.warning("idle_timeout", link=self.link, peer=self.peer, seconds=seconds, reason="not logged on")
            self.close_with_error("idle_timeout", f"not logged on within {seconds}s")

    def set_idle_timeout(self, seconds: float | None) -> None:
        self.idle_timeout = seconds
        self._arm_idle()

    def _arm_idle(self) -> None:
        """Something was received (or the timeout changed): the idle deadline is `t` from now.
        The timer is not cancelled and made again for every read, which cost ~8 % of the CP's
        CPU in a logon storm: it stays, and when it fires early it sleeps on to the deadline."""
        t = self.idle_timeout
        if t is None and self.partial_timeout is not None and self.decoder.buffered:
            t = self.partial_timeout
        h = self._idle_handle
        if t is None or self.closed:
            if h is not None:
                h.cancel()
                self._idle_handle = None
            return
        due = self._loop.time() + t
        self._idle_t = t
        self._idle_due = due
        if h is not None:
            if self._idle_at <= due:
                return  # it fires first, and sleeps on to `due`
            h.cancel()  # a shorter timeout than the one it was set for
        self._idle_at = due
        self._idle_handle = self._loop.call_at(due, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        due = self._idle_due
        if (self.reading_paused and not self.write_paused) or (self.idle_timeout is None and self._held_by_writes()):
            # we stopped reading it (held messages at their bound, a logon's turn; or, a frame
            # begun and no idle timeout set, our writes it does not read yet, which without a frame
            # begun would close nothing either): the silence is ours, not the peer's; the timeout
            # starts again once we read
            due = self._idle_due = self._loop.time() + self._idle_t
        if due - self._loop.time() > 0.001:  # heard from since it was set (uvloop's timers: whole ms)
            self._idle_at = due
            self._idle_handle = self._loop.call_at(due, self._idle_fired)
            return
        seconds = self._idle_t
        if self._held_by_writes():
            # we read nothing because it read nothing of ours: say that, not "nothing received"
            log.warning("idle_timeout", link=self.link, peer=self.peer, seconds=seconds, why="not_reading")
            self.close_with_error("not_reading", f"your side read nothing of what was sent for {seconds}s; read the replies while sending")
            return
        log.warning("idle_timeout", link=self.link, peer=self.peer, seconds=seconds)
        self.close_with_error("idle_timeout", f"nothing received for {seconds}s")

    # -- hooks --------------------------------------------------------------
    def on_open(self) -> None:
        pass

    def on_lost(self, exc: Exception | None) -> None:
        pass


def require(msg: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    """Field `key` of `msg`, checked against `typ`; a bad field is a protocol error."""
    if key not in msg:
        raise ProtocolError("bad_fields", f"{msg.get('t')}: missing field {key!r}")
    val = msg[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(val, bool) and int in types and bool not in types:  # (a bool is an int to isinstance)
        raise ProtocolError("bad_fields", f"{msg.get('t')}: field {key!r} must be int")
    if not isinstance(val, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ProtocolError("bad_fields", f"{msg.get('t')}: field {key!r} must be {name}")
    return val
