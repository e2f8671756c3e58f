"""One simulated terminal speaking the terminal link (docs/protocol.md §1).

`TerminalClient` is both the per-terminal state and the `asyncio.Protocol` of
its current connection (the same object serves every reconnection), so a
terminal costs one small slotted object, a dict of at most `window`
outstanding ids and one byte per message sent (the marks array of
`hsb.term.verdict`). It never blocks and never owns a task.

A terminal keeps a `Listener` informed of everything that happens (the load
generator counts, the interactive terminal prints). When its connection drops
it asks its `Connector` (hsb.term.connector) to reconnect it after a short jittered backoff; on the
next `welcome` it re-sends, with the same ids, every message it sent that was
not acknowledged, and keeps waiting for replies to what was. The states of its
connection, the welcome, and what that and a failed connect tell of the CP
process are `hsb.term.logon`, a mixin of `TerminalClient`.

Message ids are `base + n * stride` for the n-th message (n from 0). The base
defaults to the wall clock in microseconds so that a terminal started again
later never reuses an id the CP has already acknowledged (the CP
re-acknowledges such an id without delivering it). A load run gives terminal
number i the base `run base + i` and the stride N (the number of terminals),
so no two terminals of a run ever use the same id and a reply delivered to the
wrong terminal is caught; the ids still grow faster than the clock only above
a million messages a second.

By default a terminal **resumes** (docs/protocol.md §1): its hello says `last_reply`, it
confirms replies as they arrive, and a reply the CP sends again after a reconnect (marked
`resent`) that it held at its hello is ignored once, if it is the same answer; any other second
copy is a duplicate. What it claims and confirms, and an earlier run's replies (below its first
id: not judged, confirmed), are `hsb.term.resume`, a mixin of `TerminalClient`. `resume=False`
is the older terminal that says none of this.

A terminal is strict about what comes back (the verdict of `hsb.term.report`): how it
judges each acknowledgement and reply is `hsb.term.answers`, a mixin of `TerminalClient`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from hsb.backoff import Backoff
from hsb.term.answers import Answers
from hsb.term.hopeless import cert_refused
from hsb.term.listener import Listener
from hsb.term.logon import CONNECTING as CONNECTING  # (importable from here, as before)
from hsb.term.logon import DOWN as DOWN
from hsb.term.logon import HELLO as HELLO
from hsb.term.logon import WELCOMED as WELCOMED
from hsb.term.logon import Logon, int_field
from hsb.term.net import dead_peer_detection, new_id_base
from hsb.term.resume import Resume
from hsb.term.verdict import ACKED, SENT
from hsb.wire.framing import DEFAULT_MAX_FRAME, Decoder, ProtocolError, encode
from hsb.wire.lost import lost_why

if TYPE_CHECKING:
    from hsb.term.connector import Connector

CP_TYPES = frozenset({"welcome", "error", "session", "ack", "reply", "switched"})

BACKOFF_MIN = 0.05
BACKOFF_MAX = 0.5  # a terminal tries again at least twice a second: a restarted CP is back in ~0.3 s

_BYE = encode({"t": "bye"})
WRITE_CHUNK = 64  # messages a terminal owes go out this many a write, until its transport pauses


class TerminalClient(Logon, Answers, Resume, asyncio.Protocol):
    """State of one terminal plus the protocol of its current connection."""

    __slots__ = (
        "name",
        "listener",
        "connector",
        "base",
        "marks",
        "outstanding",
        "waited",
        "payloads",
        "pad",
        "window",
        "state",
        "transport",
        "decoder",
        "session_open",
        "epoch",
        "welcomed_at",
        "session_at",
        "disconnects",
        "unexpected",
        "backoff",
        "stopping",
        "bye_said",
        "closed",
        "last_error",
        "cork",
        "idx",
        "stride",
        "early",
        "bad_data",
        "bad_data_ids",
        "check_data",
        "session_closed",
        "resume",
        "keepalive",
        "prefix",
        "confirmed",
        "confirm_at",
        "confirm_timer",
        "resent_ignored",
        "earlier_run",
        "earlier_ids",
        "earlier_run_replies",
        "foreign_upto",
        "told_last_reply",
        "recovered_upto",
        "held_upto",
        "may_resend",
        "resent_below",
        "said_last_reply",
        "replies_read",
        "recovered_resent",
        "floor",
        "unexpected_acks",
        "acked_max",
        "acks_forgotten",
        "failed_since_drop",
        "cp_instance",
        "cp_reconnects",
        "away_counted",
        "away_since_welcome",
        "last_switch",
        "protocol_errors",
        "workload",
        "sent_upto",
        "mark_resent",
        "dropped",
        "cp_present_drops",
        "logon_drops",
        "told_why",
        "broke_protocol",
        "cork_upto",
        "paused",
        "conn_upto",
    )

    def __init__(
        self,
        name: str,
        listener: Listener,
        *,
        base: int | None = None,
        window: int = 0,
        keep_payloads: bool = False,
        pad: str = "",
        stride: int = 1,
        idx: int = 0,
        check_data: bool = False,
        resume: bool = True,
        workload: Any = None,
        keepalive: int = 1,
        floor: int | None = None,
        mark_resent: bool = True,
    ) -> None:
        self.name = name
        # mark what is sent again after a reconnect `resent` (a test turns it off to see the
        # hosts' own memory of what they handed over at work, as for a terminal that does not mark)
        self.mark_resent = mark_resent
        self.keepalive = keepalive  # TCP keepalive's idle seconds (0: the system's default, none)
        self.workload = workload  # what each message says and which replies are right (hsb.term.workload)
        self.listener = listener
        self.connector: Connector | None = None
        self.base = new_id_base() if base is None else base
        # the run's first id (its terminals' ids interleave above it): an id below it is an
        # earlier run's; one above it that is not this terminal's is another terminal's
        self.floor = self.base if floor is None else min(floor, self.base)
        self.marks = bytearray()  # one byte per id sent: SENT | ACKED | reply count
        self.outstanding: dict[int, float] = {}  # id -> first send time, until the first reply
        # id -> how long it was owed before it could be sent (its turn came while the terminal
        # was not logged on, or its window was full): part of its reply's latency
        self.waited: dict[int, float] = {}
        self.payloads: dict[int, Any] | None = {} if keep_payloads else None
        self.pad = pad
        self.window = window  # max outstanding; 0 = unlimited
        self.state = DOWN
        self.transport: asyncio.Transport | None = None
        self.decoder: Decoder | None = None
        self.session_open = False
        self.epoch: int | None = None
        self.welcomed_at: float | None = None  # first welcome (monotonic)
        self.session_at: float | None = None  # first session open (monotonic)
        self.disconnects = 0
        self.unexpected = 0  # replies to ids never sent
        self.backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        self.stopping = False
        self.bye_said = False  # its bye written: nothing may follow it on the wire
        self.closed: asyncio.Future[None] | None = None
        self.last_error: str | None = None
        self.cork: list[bytes] | None = None  # frames submitted while handling one read, written at once
        self.idx = idx  # this terminal's number in its run (load runs)
        self.stride = max(1, stride)  # ids grow by this much per message
        self.early = 0  # first replies that came before the message's ack
        self.bad_data = 0  # first replies whose data was not what was sent (check_data)
        self.bad_data_ids: list[int] = []
        self.check_data = check_data
        self.session_closed = 0  # session closed notices while not logging off
        self.resume = resume
        self._resume_init()  # (hsb.term.resume: last_reply, confirmations, what may come again)
        self.resent_ignored = 0  # resent replies for ids already answered (as the protocol says)
        # the highest id written to a connection (ids go out in order): one at or below it, sent
        # again after a reconnect, is marked resent (an earlier CP may have handed it to the active)
        self.sent_upto = 0
        self.unexpected_acks = 0  # acknowledgements of ids this terminal never sent
        self.acked_max = 0  # the highest id of this run acknowledged
        self.acks_forgotten = 0  # welcomes whose last_acked was below an id acknowledged before
        self.failed_since_drop = False  # a connect failed since the connection dropped: the CP was away
        self.cp_instance: str | None = None  # the CP process of the last welcome (its `cp`)
        # changes of CP process this terminal lived through: a connect of its own that failed after
        # it was logged on (counted once until it is again: only a welcome names a CP process), or
        # a welcome from another process than the last (`cp`) when none failed; a welcome from the
        # same process takes back what it counted since the last (the CP was there all along)
        self.cp_reconnects = 0
        self.away_counted = False  # the CP's absence counted since it was last logged on
        self.away_since_welcome = 0  # how many times, since its last welcome
        self.last_switch = ""  # the kind in the last `switched` notice (failover, switchover, promote)
        self.protocol_errors = 0  # frames from the other side that broke the protocol
        self.dropped = False  # a logged-on connection dropped, and no welcome since
        # disconnects the CP's absence does not explain: welcomed again by the same CP process
        # (its `cp`) with no failed connect between (a CP restart or takeover explains the rest)
        self.cp_present_drops = 0
        self.logon_drops = 0  # connections closed after the hello with neither a welcome nor an error
        self.told_why = False  # this connection had an error frame (a refusal says why it closes)
        self.broke_protocol = False  # this connection's CP sent what breaks the protocol
        self.cork_upto = 0  # the highest id in the cork (`sent_upto` once the cork is written)
        # the connection's transport asked for no more writes (its buffer is full: the CP does not
        # read): messages wait, unwritten, until it resumes (asyncio flow control)
        self.paused = False
        self.conn_upto = 0  # the highest id written on this connection (ids go out in order)

    # -- sending ---------------------------------------------------------
    @property
    def sent(self) -> int:
        return len(self.marks)

    @property
    def can_send(self) -> bool:
        """Welcomed, not stopping, its writes not paused, and below the outstanding window."""
        return self.state == WELCOMED and not self.stopping and not self.paused and (self.window <= 0 or len(self.outstanding) < self.window)

    @property
    def logged_on(self) -> bool:
        """Welcomed on a connection it has not said bye on: a frame of its own may go."""
        return self.state == WELCOMED and self.transport is not None and not self.bye_said

    def index(self, msg_id: int) -> int:
        """Position of `msg_id` in the marks array, or -1 if this terminal never sent it."""
        k, rem = divmod(msg_id - self.base, self.stride)
        return k if not rem and 0 <= k < len(self.marks) else -1

    def payload(self, msg_id: int) -> Any:
        if self.payloads is not None:
            return self.payloads[msg_id]
        if self.workload is not None:
            return self.workload.payload(self.idx, (msg_id - self.base) // self.stride)
        return f"{self.name}:{(msg_id - self.base) // self.stride}{self.pad}"

    def submit(self, data: Any = None, due: float | None = None) -> int:
        """Record a new message and send it now if logged on and its writes are not paused (else
        on the next welcome, or when they resume). `due`: when it was meant to go (monotonic), if
        it waited: its reply's latency counts from then."""
        msg_id = self.base + len(self.marks) * self.stride
        self.marks.append(SENT)
        now = time.monotonic()
        self.outstanding[msg_id] = now
        if due is not None and due < now:
            self.waited[msg_id] = now - due
        if self.payloads is not None:
            self.payloads[msg_id] = "" if data is None else data
        self.listener.on_sent(self, msg_id, now)
        if self.state == WELCOMED and self.transport is not None and not self.bye_said and not self.paused:
            frame = encode(self._msg(msg_id, False))
            self.conn_upto = msg_id
            if self.cork is not None:
                self.cork.append(frame)
                self.cork_upto = msg_id  # written with the cork, if the connection is still there then
            else:
                self.transport.write(frame)
                self.sent_upto = msg_id
        return msg_id

    def _write_owed(self, owed: list[int] | None = None) -> None:
        """Write, in id order, what this connection owes the CP: every message not acknowledged
        and not yet written on it (after a welcome all of them, marked `resent` if an earlier
        connection had them; `owed`: those, when the caller has them), WRITE_CHUNK at a time
        until its transport pauses (then on resume)."""
        tr = self.transport
        if self.state != WELCOMED or tr is None or self.bye_said or self.paused:
            return
        upto, mark = self.sent_upto, self.mark_resent  # (above upto: never sent, a first send)
        if owed is None:
            owed = [i for i in self.unacked_ids() if i > self.conn_upto]
        for k in range(0, len(owed), WRITE_CHUNK):
            if self.paused or self.transport is not tr:
                return
            chunk = owed[k : k + WRITE_CHUNK]
            self.conn_upto = chunk[-1]
            self.sent_upto = max(self.sent_upto, chunk[-1])
            tr.write(b"".join(encode(self._msg(i, mark and i <= upto)) for i in chunk))  # (it may pause)

    def unacked_ids(self) -> list[int]:
        """Outstanding ids the CP has not acknowledged, in id order."""
        marks, base, stride = self.marks, self.base, self.stride
        return [i for i in self.outstanding if not marks[(i - base) // stride] & ACKED]

    def bye(self) -> None:
        """Log off: confirm what it holds, send bye, stop reconnecting; the CP closes the connection.
        Nothing is written after the bye: not a reply's confirm, nor (its welcome still to come
        when it said bye) the messages the welcome would have had it send again."""
        self.stopping = True
        if self.transport is None or self.transport.is_closing() or self.bye_said:
            return  # closed by the CP (a refusal, say) and connection_lost not run yet: nothing to say
        try:
            if self.state >= HELLO:
                self._confirm(force=True)
                if self.cork is not None:  # (said while frames are handled: after what they corked)
                    self.cork.append(_BYE)
                else:
                    self.transport.write(_BYE)
                self.bye_said = True
            else:
                self.transport.close()
        except RuntimeError:  # uvloop: its handle is closed though is_closing() says not
            self.abandoned()

    def abandoned(self) -> None:
        """This connection's transport was closed under it without a connection_lost to come
        (uvloop closes the handle of a connection made just as its connect was cancelled, and
        says nothing): it is lost now, closed by this side (not a drop of the CP's)."""
        tr = self.transport
        if tr is None or tr.is_closing():
            return  # (a transport closing calls connection_lost)
        self.told_why = True
        self.connection_lost(None)

    def close(self, abort: bool = False) -> None:
        """Stop for good: close the connection without logging off."""
        self.stopping = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self.transport = transport
        if self.keepalive:
            dead_peer_detection(transport.get_extra_info("socket"), self.keepalive)
        self.decoder = Decoder(DEFAULT_MAX_FRAME, CP_TYPES)
        self.told_why = False
        self.broke_protocol = False
        self.paused = False
        self.conn_upto = 0
        self.replies_read = 0
        self.state = HELLO
        if self.stopping:
            transport.close()
            return
        hello: dict[str, Any] = {"t": "hello", "terminal": self.name}
        if self.resume:
            hello["last_reply"] = self.hello_last_reply()
            hello["first"] = self.base  # (its claim covers no earlier run's id: the CP sends those again)
        transport.write(encode(hello))

    def data_received(self, data: bytes) -> None:
        assert self.decoder is not None
        # Messages submitted while these frames are handled (a closed-loop load sends one per
        # reply) go out in one write after the batch, not one write each.
        self.cork = []
        self.cork_upto = 0
        try:
            try:
                msgs = self.decoder.feed(data)
            except ProtocolError as exc:
                for m in exc.before:
                    self._handle(m)
                self._protocol_error(exc)
                return
            for m in msgs:
                self._handle(m)
        finally:
            cork, self.cork = self.cork, None
            tr = self.transport
            if cork and tr is not None and not tr.is_closing():
                tr.write(cork[0] if len(cork) == 1 else b"".join(cork))
                if self.cork_upto > self.sent_upto:
                    self.sent_upto = self.cork_upto
            # (else nothing of it left: what it held is sent after the next welcome, as a first send)

    def pause_writing(self) -> None:
        """The transport's buffer is full (the CP does not read): no new message is written, nor
        sent again, until `resume_writing` (frames of its own, a confirm or the bye, still go)."""
        self.paused = True

    def resume_writing(self) -> None:
        """The CP reads again: what waited goes out, and the listener may send on."""
        self.paused = False
        self._write_owed()
        if not self.paused and self.state == WELCOMED:
            self.listener.on_writable(self)

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = DOWN
        self.paused = False
        if self.confirm_timer is not None:
            self.confirm_timer.cancel()
            self.confirm_timer = None
        if was == WELCOMED:  # (a connection that never got in: the CP's absence, if it was, goes on)
            self.failed_since_drop = False
        self.transport = None
        self.decoder = None
        self.session_open = False
        if self.stopping:
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)
            return
        if was == HELLO and exc is not None and cert_refused(exc):
            # the CP refused our certificate: TLS 1.3 ends the client's handshake before the CP
            # checks it, so its alert comes after the hello; a failed connect, not a drop
            self.connect_failed(exc)
            return
        retry = self._next_backoff()
        if was == WELCOMED:
            self.disconnects += 1
            self.dropped = True
            self.away_counted = False
        elif was == HELLO and not self.told_why:
            # closed after the hello, with neither a welcome nor an error (a refusal says why):
            # judged as a drop, by the CP that welcomes it next (the same one: it was there). It
            # names no CP process (a dying CP's accept queue reset, say): a failed connect after
            # it is the same absence, counted once (a CP that died before welcoming anyone is
            # the CP log's to show)
            self.logon_drops += 1
            self.dropped = True
        if was >= HELLO:
            self.listener.on_disconnect(self, exc, retry, was == WELCOMED)
        if self.connector is not None:
            self.connector.schedule(self, retry)

    def why_lost(self, exc: Exception | None) -> str:
        """Why its connection ended, as this side saw it: the code of the CP's error frame,
        `protocol_error` (the CP sent what breaks the protocol), `closed_here`, else
        hsb.wire.lost.lost_why's word (`closed`: the CP ended it without saying why, `reset`,
        `timed_out`: keepalive gave up on a silent CP or line)."""
        if self.told_why:
            return self.last_error or ("protocol_error" if self.broke_protocol else "closed_here")
        return lost_why(exc)

    def connect_failed(self, exc: BaseException) -> None:
        """Called by the connector when a TCP connect attempt failed."""
        self.cp_away()
        if self.stopping:
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)
            return
        retry = self._next_backoff()
        self.listener.on_connect_failed(self, exc, retry)
        if self.connector is not None:
            self.connector.schedule(self, retry)

    def _next_backoff(self) -> float:
        return self.backoff.next()

    # -- frames from the CP -------------------------------------------------
    def _protocol_error(self, exc: ProtocolError) -> None:
        self.told_why = True  # (this side closes: counted as a protocol error, not as the CP's drop)
        self.broke_protocol = True
        self.protocol_errors += 1
        self.listener.on_protocol_error(self, exc)
        if self.transport is not None:
            self.transport.write(encode(exc.frame()))
            self.transport.close()

    def _handle(self, msg: dict[str, Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            t = msg["t"]
            if self.state != WELCOMED and t not in ("welcome", "error"):
                # the CP welcomes before anything else on a connection (it may refuse instead)
                raise ProtocolError("bad_fields", f"{str(t)[:40]} before the welcome")
            if t == "reply":
                self.replies_read += 1  # (a confirm says how many: `seen`)
                self._on_reply(int_field(msg, "id"), msg.get("data"), bool(msg.get("resent")))
            elif t == "ack":
                self._on_ack(int_field(msg, "id"))
            elif t == "welcome":
                self._on_welcome(msg)
            elif t == "session":
                self._on_session(msg)
            elif t == "switched":
                self.epoch = int_field(msg, "epoch")
                self.last_switch = str(msg.get("kind", "failover"))
                self.listener.on_switched(self, self.epoch)
            elif t == "error":
                code, text = str(msg.get("code", "")), str(msg.get("msg", ""))
                self.last_error = code
                self.told_why = True
                if code == "unknown_terminal":
                    self.backoff.slow_down()  # pointless to hurry
                self.listener.on_error(self, code, text)
                self.transport.close()
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _msg(self, msg_id: int, again: bool) -> dict[str, Any]:
        """A `msg` frame; `again`: sent before on an earlier connection, never acknowledged."""
        msg: dict[str, Any] = {"t": "msg", "id": msg_id, "data": self.payload(msg_id)}
        if again:
            msg["resent"] = True
        return msg

    def _on_session(self, msg: dict[str, Any]) -> None:
        state = msg.get("state")
        if state not in ("open", "closed"):
            raise ProtocolError("bad_fields", "session: state must be open or closed")
        epoch = int_field(msg, "epoch")
        self.epoch = epoch
        self.session_open = state == "open"
        if state == "closed" and not self.stopping:
            self.session_closed += 1
        first_open = self.session_open and self.session_at is None
        if first_open:
            self.session_at = time.monotonic()
        reason = msg.get("reason")
        self.listener.on_session(self, state, epoch, None if reason is None else str(reason), first_open)
