"""The terminal link (SPEC §6.2): a thin asyncio.Protocol that checks frames and calls the CP."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from hsb.cp.state import Session, Term
from hsb.wire.conn import PROTOCOL_ERRORS, FramedProtocol, require
from hsb.wire.framing import ProtocolError, data_size, payload_max
from hsb.wire.lost import lost_why

if TYPE_CHECKING:
    from hsb.cp.core import CP

log = structlog.get_logger("hsb.cp")

TERMINAL_TYPES = ("hello", "msg", "confirm", "bye")
ID_MAX = 2**63 - 1
# what a decoded frame held back behind unconfirmed replies takes besides its data (its map and
# fields, about 280 bytes measured): the frames held back are bounded by their memory, held_bytes
PARKED_FRAME_COST = 300


class TerminalProtocol(FramedProtocol):
    link = "terminal"
    dispatch = {"hello": "on_hello", "msg": "on_msg", "confirm": "on_confirm", "bye": "on_bye"}
    read_under_write_pressure = False  # a terminal that does not read its replies is not read
    flat_frames = True  # hello, msg, confirm, bye: plain values, never an array or a map inside
    # only the hello is decoded until it is taken: a client nobody knows yet cannot make the CP
    # decode a whole read (256 KB of frames: 28 ms of the loop, 5.6 MB of objects) behind it
    hold_until_vouched = True
    held_max = None  # a terminal may send on without waiting for its welcome: it is one read at most
    lost_why: str | None = None  # why it ended, once it has (hsb.cp.drops): set by whoever knows

    def __init__(self, cp: CP, *, hello_timeout: float, idle_after_hello: float | None, **kw: Any) -> None:
        super().__init__(idle_timeout=hello_timeout, partial_timeout=hello_timeout, **kw)
        self.cp = cp
        self.term: Term | None = None
        self._idle_after = idle_after_hello
        self._hello_timeout = hello_timeout
        self.bye_waiting = False  # its bye waits in the logoff storm's queue (hsb.cp.logons)
        self.welcome_acked = 0  # the last_acked its welcome said: above it, this terminal was told nothing yet
        # the data of the messages held above it then (accepted, not yet durable): another message
        # under one of those ids is a reuse, even once the first was answered and let go
        self.unacked_at_welcome: dict[int, Any] = {}
        self.sent_upto = 0  # the highest message id this connection sent
        self.first: int | None = None  # its hello's `first`: the run's first id, below which last_reply claims nothing
        self.reply_base = 0  # its terminal's reply_frames at its hello: a confirm's `seen` counts from there
        # its terminal's session, kept at its hello for a grant not yet announced and not told to
        # it then: the grant's flip owes it the session's opening (hsb.cp.flip)
        self.session_untold: Session | None = None
        # its kept replies at the bound: frames other than confirm wait here, in order, while
        # confirms are still read and taken (the only way the bound is left); None: not parking
        self.parked: list[dict[str, Any]] | None = None
        # the memory of the parked frames, their data and PARKED_FRAME_COST each (bounded as the
        # data of held messages is: held_bytes)
        self.parked_bytes = 0
        # a message's data must fit, with the fields around it, in the deliver frame to a host
        # (whose max_frame is set the same): one that did not would break the active's link at
        # each re-delivery, and the standby's after a switch (as the hosts limit replies)
        self.max_data = payload_max(self.decoder.max_frame)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.cp.tickles is not None:
            self.cp.tickles.opened(self, transport.get_extra_info("sockname"), self.peername)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cp.tickles is not None:
            self.cp.tickles.closed(self)
        super().connection_lost(exc)

    def plaintext_refusal(self) -> dict[str, Any] | None:
        # (PROTOCOL_ERRORS counts it as tls_refused, with the log line that names the peer)
        return {
            "t": "error",
            "code": "tls_required",
            "msg": "this port speaks TLS (the CP's [tls] terminals = true): connect with TLS, trusting the CP's CA (hsbterm: --tls --ca FILE)",
        }

    def on_open(self) -> None:
        self.set_deadline(self._hello_timeout)  # hello within hello_timeout of the connect, however slowly bytes arrive

    def on_hello(self, msg: dict[str, Any]) -> None:
        if self.term is not None:
            raise ProtocolError("bad_hello", "hello sent twice")
        name = msg.get("terminal")
        if not isinstance(name, str) or not name:
            raise ProtocolError("bad_hello", "hello needs a non-empty string 'terminal'")
        last_reply = msg.get("last_reply")
        if last_reply is not None and (not isinstance(last_reply, int) or isinstance(last_reply, bool) or not 0 <= last_reply <= ID_MAX):
            raise ProtocolError("bad_hello", f"hello: last_reply must be an id 0..{ID_MAX}")
        first = msg.get("first")
        if first is not None and (type(first) is not int or not 0 < first <= ID_MAX):
            raise ProtocolError("bad_hello", f"hello: first must be an id 1..{ID_MAX} (this run's first message id)")
        self.first = first
        names = self.tls_peer_names()
        if (
            names is not None and self.tls_cert_presented()
        ):  # TLS with a terminal certificate: it must be this terminal's (one naming nobody is no one's)
            if name not in names:
                why = f"terminal {name[:64]!r} presented the certificate of {sorted(names)[:4]}"
                log.warning("tls_refused", link=self.link, peer=self.peer, reason=why)
                PROTOCOL_ERRORS[(self.link, "tls_name_mismatch")] += 1
                self.close_with_error("tls_name_mismatch", why)
                return
        # The hello is here. In a logon storm it may wait for its turn (hsb.cp.logons), with this
        # connection not read: no timer may close it meanwhile, for a silence that is ours.
        self.clear_deadline()
        self.idle_timeout = self.partial_timeout = None
        self._arm_idle()  # (cancels the idle timer)
        if self.cp.logons.admit(self, name, last_reply, self._loop):
            self.logon(name, last_reply, inline=True)

    def logon(self, name: str, last_reply: int | None, inline: bool = False) -> None:
        """The hello taken: now (`inline`: inside the drain of the read that brought it), or in its
        turn in a logon storm (hsb.cp.logons)."""
        self.partial_timeout = self._hello_timeout  # a frame begun and stalled still closes the link
        self.cp.terminal_hello(self, name, last_reply)
        if self.term is not None:
            if self.cp.tickles is not None:
                self.cp.tickles.named(self, name)
            self.release_held()  # (before the idle timer: what it held is whole frames, not one begun)
            self.set_idle_timeout(self._idle_after)
            if not inline and self._backlog and not self.closed and not self.reading_paused and not self._yielding:
                self._loop.call_soon(self._drain_backlog)  # (its turn's resume_reading found nothing decoded)

    def on_msg(self, msg: dict[str, Any]) -> None:
        if self.term is None:
            raise ProtocolError("bad_hello", "the first frame must be hello")
        mid = require(msg, "id", int)
        data = require(msg, "data", (bytes, str))
        if not 0 < mid <= ID_MAX:
            raise ProtocolError("bad_fields", f"msg: id must be 1..{ID_MAX}")
        self._deliverable(mid, data)
        self.cp.terminal_msg(self.term, mid, data, msg.get("resent") is True)

    def _deliverable(self, mid: Any, data: Any) -> None:
        """message_too_large unless `data` fits the frame that delivers it to a host."""
        limit = min(self.max_data, self.cp.max_data)  # (the smallest max_frame of the CP and its hosts)
        if isinstance(data, (bytes, str)) and len(data) > limit // 4 and data_size(data) > limit:
            raise ProtocolError(
                "message_too_large",
                f"msg {mid}: data larger than {limit} bytes, which the CP cannot deliver to a host"
                " (send less, or raise max_frame on the CP and both hosts)",
            )

    def on_confirm(self, msg: dict[str, Any]) -> None:
        if self.term is None:
            raise ProtocolError("bad_hello", "the first frame must be hello")
        upto = require(msg, "id", int)
        if not 0 <= upto <= ID_MAX:
            raise ProtocolError("bad_fields", f"confirm: id must be 0..{ID_MAX}")
        seen = msg.get("seen")
        if seen is not None and (type(seen) is not int or seen < 0):
            raise ProtocolError("bad_fields", "confirm: seen must be an int >= 0 (the reply frames read on this connection)")
        self.cp.terminal_confirm(self.term, upto, None if seen is None else self.reply_base + seen)

    def on_bye(self, msg: dict[str, Any]) -> None:
        if self.term is None:
            raise ProtocolError("bad_hello", "the first frame must be hello")
        self.bye_waiting = True
        if self.cp.logons.admit_bye(self, self.term.name, self._loop):
            self.logoff()

    def logoff(self) -> None:
        """The bye taken: now, or in its turn in a logoff storm (hsb.cp.logons)."""
        self.bye_waiting = False
        term = self.term
        if term is not None and term.conn is self:
            self.cp.terminal_bye(term)

    def _handle(self, msg: dict[str, Any]) -> None:
        if self.term is None and msg["t"] != "hello":
            self.protocol_error(ProtocolError("bad_hello", "the first frame must be hello"))
            return
        parked = self.parked
        if parked is not None and msg["t"] != "confirm":
            data = msg.get("data") if msg["t"] == "msg" else None
            if isinstance(data, (bytes, str)):
                try:
                    self._deliverable(msg.get("id"), data)  # now, as it would be in its turn (on_msg)
                except ProtocolError as exc:  # (outside the dispatch's own catch: said here, not a traceback)
                    self.protocol_error(exc)
                    return
                self.parked_bytes += data_size(data)
            parked.append(msg)
            self.parked_bytes += PARKED_FRAME_COST
            # bounded by memory, not by a count tied to held_bound: these were mostly sent before
            # the replies reached the terminal (unread at its held bound), its confirm behind them
            if self.parked_bytes >= self.cp.held_bytes:
                self._park_backlog()
            return
        super()._handle(msg)

    def park(self, on: bool) -> None:
        """Kept replies at the bound (`on`): read on, take confirmations (they settle replies, ahead
        of the frames before them: a confirmation speaks only of replies the terminal already
        has) and keep every other frame waiting in order; off: those frames go first, then the rest."""
        if on:
            if self.parked is None:
                self.parked = []
            return
        if self.parked is None:
            return
        parked, self.parked = self.parked, None
        self.parked_bytes = 0
        if parked:
            self._backlog.extendleft(reversed(parked))
        if self.reading_paused:
            if not self.bye_waiting:  # (a bye waiting in the logoff storm's queue: read in its turn)
                self.resume_reading()  # (and it drains what waits)
        elif self._backlog and not self.closed:
            self._loop.call_soon(self._drain_backlog)

    def _park_backlog(self) -> None:
        """The parked frames reached their bound (held_bytes of memory): take the confirmations
        already read; if that does not end the parking, the terminal sent that much without
        confirming what it holds, and the connection is closed with an error saying so (not left
        unread for ever). Nothing parked was acknowledged: the terminal sends it again, and its
        next hello's last_reply settles the replies it holds."""
        bl = self._backlog
        while bl and self.parked is not None and not self.closed:
            m = bl.popleft()
            if m["t"] == "confirm":
                super()._handle(m)  # may end the parking: the rest then drains as usual
            else:
                self.parked.append(m)
        if self.parked is not None and not self.closed:
            term = self.term
            n = len(term.replies) if term is not None else 0
            log.warning(
                "terminal_unconfirmed_replies", terminal=term.name if term else None, peer=self.peer, kept_replies=n, waiting=len(self.parked)
            )
            self.close_with_error(
                "unconfirmed_replies",
                f"{n} replies not confirmed and {len(self.parked)} frames waiting behind them: confirm the replies"
                " you hold (confirm id), then send on; the waiting messages were not acknowledged, send them again",
            )

    def gone(self) -> None:
        """Its peer went while it was not read (hsb.wire.conn.peer_gone): lost now, as once its
        end had been read; a bye it gave (waiting in the logoff storm's queue, parked, or read
        and waiting behind the held bound) is still a logoff. Nothing else it sent was taken:
        none of it was acknowledged."""
        if self.unread_has("bye"):  # (one read already: `on_lost` finds it)
            self.bye_waiting = True
        self.lost_why = self.lost_why or "closed_unread"
        self.abort()  # (its connection_lost comes later and finds the terminal no longer its own)
        self.on_lost(None, now=True)

    def _bye_read(self) -> bool:
        """A bye read and decoded but not taken: waiting behind the held bound in the backlog, or
        parked behind unconfirmed replies."""
        return any(m["t"] == "bye" for m in self._backlog) or bool(self.parked and any(m["t"] == "bye" for m in self.parked))

    def close(self) -> None:
        term = self.term
        # (what waits behind it is never taken now: nothing of it was acknowledged). A bye parked
        # behind unconfirmed replies too: its terminal may say hello again before this
        # connection's connection_lost, which then finds the terminal no longer its own
        if self._bye_read():
            self._backlog.clear()
            self.bye_waiting = True
        elif not self.bye_waiting and self.reading_paused and term is not None and term.conn is self and self.unread_has("bye"):
            # a bye it wrote after its bound, unread in the kernel (a flip's classic path closes it
            # while it waits for that close): a logoff all the same, as when it goes (`gone`)
            self.bye_waiting = True
        if self.bye_waiting and term is not None and term.conn is self:
            # closed by the CP while its bye waited (a timer, a flip's classic path), perhaps
            # inside a flip's slice: its session closes as a logoff when the connection goes
            self.bye_waiting = False
            self.cp.logged_off(term)
        super().close()

    def why_ended(self, exc: Exception | None = None) -> str:
        """Why this connection ended (hsb.cp.drops): as said by whoever knew (`lost_why`), the error
        code this side closed it with, closed here otherwise, else what its end said (`exc`)."""
        return self.lost_why or self.close_code or ("closed_by_cp" if self.closed_here else lost_why(exc))

    def on_lost(self, exc: Exception | None, now: bool = False) -> None:
        term = self.term
        self.lost_why = self.why_ended(exc)
        if self._bye_read():
            self.bye_waiting = True  # it said bye behind the bound, and went: a logoff all the same
        self.parked = None
        if term is not None and term.conn is self:
            if self.bye_waiting:  # it said bye, and went before its turn: a logoff all the same
                try:
                    self.logoff()
                finally:
                    self.cp.terminal_lost(term)
            elif now or self.cp.logons.admit_lost(self, term.name, self._loop):  # else in its turn (a storm)
                self.cp.terminal_lost(term)
