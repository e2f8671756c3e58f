"""The server side of TLS in a connection: `FramedProtocol` runs it itself (hsb.wire.tlsio's
`ServerTLS` on memory BIOs, not the event loop's TLS), so a handshake refused is its own to log
and answer. Here: the network bytes through TLS and the link opened once the handshake is done
(`_tls_in`), a handshake's turn when handshakes are sliced (`tls_turn`, hsb.wire.handshakes), a
refusal (an alert, or for a client that spoke plaintext an error frame it can read), the peer's
close_notify taken as its end, and the names in the certificate the other side presented.

A mixin of `hsb.wire.conn.FramedProtocol`, whose state it reads and changes (the TLS state is
made in its `__init__`); the reading, the frames and the writes (TLS-wrapped there) are there.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

from hsb.wire.framing import encode
from hsb.wire.handshakes import HANDSHAKES
from hsb.wire.tls import names_der as tls_names_der
from hsb.wire.tls import own_expired as tls_own_expired
from hsb.wire.tlsio import ServerTLS, TLSFailed

if TYPE_CHECKING:
    from hsb.wire.conn import FramedProtocol


class ServerSideTLS:
    """The TLS of `FramedProtocol` (see the module docstring; the attributes are its)."""

    __slots__ = ()

    # the connection's state that TLS reads and changes (set in FramedProtocol.__init__)
    _tls: ServerTLS | None
    _tls_waiting: bool
    transport: asyncio.Transport | None
    closed: bool
    closed_here: bool
    reading_paused: bool
    _yielding: bool
    _deadline_handle: asyncio.TimerHandle | None
    _backlog: collections.deque[dict[str, Any]]

    def _tls_in(self: FramedProtocol, t: ServerTLS, data: bytes) -> None:
        """Network bytes through TLS, then the frames in the plaintext."""
        was_done = t.done
        t0 = 0.0 if was_done else time.perf_counter()
        try:
            data, out = t.feed(data)
        except TLSFailed as exc:
            self.clear_deadline()
            self._tls_refused(exc.reason, exc.alert, exc.plaintext)
            return
        finally:
            if not was_done:
                HANDSHAKES.charge(time.perf_counter() - t0)
        if out and self.transport is not None:
            self.transport.write(out)
        if t.done and not was_done:
            self.clear_deadline()
            self._arm_idle()
            self.on_open()
        if not data or self.closed:
            self._tls_eof_if_due()
            return
        self._frames_in(data)

    def tls_turn(self: FramedProtocol) -> None:
        """Its handshake's turn (hsb.wire.handshakes): run it on the bytes kept, read again."""
        self._tls_waiting = False
        if self.closed or self.transport is None or self._tls is None:
            return
        if self._may_read():
            self.transport.resume_reading()
        self._tls_in(self._tls, b"")

    def _tls_eof_if_due(self: FramedProtocol) -> None:
        """The peer's TLS close_notify came and every frame before it was taken: its end, as a
        plaintext peer's FIN. What is queued goes out, then our close_notify, and the connection
        closes (a client's TLS waits for ours: without it, it gave up after its timeout, hsbctl's
        and hsbd's 1 s, and reset the connection)."""
        t = self._tls
        if t is None or not t.peer_closed or self._backlog or self.closed or self.transport is None:
            return
        self.flush()
        if self.closed:  # (its TLS broke on that write: dropped)
            return
        self.closed = True  # (by the peer: closed_here stays False)
        self.transport.write(t.shutdown())
        self.transport.close()

    def _tls_refused(self: FramedProtocol, reason: str, alert: bytes = b"", plaintext: bool = False) -> None:
        self._deadline_handle = None
        self._log_tls_refused(reason)
        tr = self.transport
        said = self.plaintext_refusal() if plaintext else None
        if said is not None:
            # a client that spoke plaintext first (a terminal without TLS) is answered in its
            # language, or it takes the close for a restart and tries again for ever
            alert = encode(said)
        if alert and tr is not None and not self.closed and not tr.get_write_buffer_size():
            # the alert first (an expired certificate, another CA, a record that did not decrypt):
            # the peer's own error then says why, instead of a connection closed for no reason it
            # can see (not behind frames it is not reading: the close would wait on them for ever)
            self.closed_here = self.closed = True
            tr.write(alert)
            tr.close()
            return
        self.abort()

    def plaintext_refusal(self) -> dict[str, Any] | None:
        """The error frame, sent unencrypted, for a client that spoke plaintext to this TLS
        listener; None: closed without a word (clients of links where the server speaks first
        never get here: they wait for its challenge)."""
        return None

    def _tls_gave_up(self: FramedProtocol) -> None:
        """Lost before its handshake was done: logged as a refusal, saying what it likely was."""
        assert self._tls is not None
        self.clear_deadline()
        expired = tls_own_expired(self._tls.obj.context) if self._tls.started else ""
        if expired:  # (the SNI callback handed it the current context: the certificate it was shown)
            why = (
                f"the client gave up during the TLS handshake: our certificate expired {expired} ago"
                " (renew it and send SIGHUP: docs/operations.md §19)"
            )
        elif self._tls.started:
            why = "the client gave up during the TLS handshake (it does not trust our certificate: another CA?)"
        else:
            why = "closed before a TLS handshake (a plaintext client waiting for the server to speak first?)"
        self._log_tls_refused(why)

    def tls_cert_presented(self) -> bool:
        """The other side presented a certificate over TLS (one that names nobody included)."""
        return self._tls is not None and bool(self._tls.obj.getpeercert(binary_form=True))

    def tls_peer_names(self) -> set[str] | None:
        """Names in the certificate the other side presented (None: not TLS; empty: none)."""
        if self._tls is None:
            return None
        der = self._tls.obj.getpeercert(binary_form=True)
        return tls_names_der(der) if der else set()
