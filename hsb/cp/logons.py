"""The logon and logoff storms sliced: hellos and byes past a burst in one turn of the event
loop wait in a queue and are handled a slice at a time (SPEC §5.7, issue 19: no O(terminals)
work in one go).

When thousands of terminals come back at once (after a CP restart, a CP machine's loss), the
kernel completes their TCP handshakes without us, and libuv then hands the loop every accept
and every first read in one poll: up to 48 × 1,024 events before any timer or `call_soon`
runs. Handled inline, each hello is a logon (the CP's state, the welcome, the resent replies,
the session asked of the active): about 80 µs here, so a poll of thousands would hold the loop
for a large part of a second, and the frames it owes the hosts (heartbeats, lease answers) would
wait that long.

So a turn handles at most BURST hellos inline, as before; a hello beyond that is queued, its
connection stops reading (what the terminal sent after its hello waits for it, in order), and
the queue is worked off SLICE_S at a time with the loop turning in between. A queued hello is
only parsed and checked, a few µs. The queue is first in, first out: while it holds anything,
every new hello joins it, so no terminal overtakes another.

Byes share the burst and the queue: thousands of terminals logging off at once (a branch
network closing, a load generator stopping) are as many logoffs in one poll, each a session
closed at the active and a connection closed, with its teardown in uvloop. A queued bye's
connection is not read until its turn; if it is lost meanwhile, the logoff is done first
(`TerminalProtocol.on_lost`), so the hosts still hear `logoff`, not `disconnect`.

Connections lost without a bye share them too: a load balancer or switch in front of the CP that
restarts, or a terminal concentrator that dies, ends thousands of connections in one poll, and
each is a session closed at the active. Past the burst, a lost terminal waits in the queue for
its `terminal_lost`; meanwhile its closed connection stays the terminal's, as it does between any
connection's close and its loss (a reply for it is kept, a reconnect takes its place first).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from hsb.slices import SlicedQueue
from hsb.wire.framing import ProtocolError

if TYPE_CHECKING:
    from hsb.cp.terminal_link import TerminalProtocol

log = structlog.get_logger("hsb.cp")

BURST = 64  # hellos and byes handled inline in one turn of the loop (queued: hsb.slices.SLICE_S a turn)
BYE = object()  # in the queue instead of a hello's last_reply: a bye
LOST = object()  # ... a connection lost without a bye


# (connection, terminal, last_reply): a hello; (connection, terminal, BYE): a bye; LOST: a loss
Queued = tuple["TerminalProtocol", str, "int | None | object"]


class Logons(SlicedQueue[Queued]):
    __slots__ = ("newest", "inline", "deferred", "deferred_byes", "deferred_losses", "closed")

    def __init__(self) -> None:
        super().__init__()
        # each waiting terminal's newest connection: one that waited so long that its terminal
        # connected again is dropped when its turn comes (its EOF is unread, since it is not
        # read), rather than logged on and the new one refused as already connected
        self.newest: dict[str, TerminalProtocol] = {}
        self.inline = 0  # hellos handled inline this turn
        self.deferred = 0  # hellos that waited in the queue (status, tests)
        self.deferred_byes = 0  # byes that waited in it
        self.deferred_losses = 0  # connections lost (no bye) whose terminal_lost waited in it
        self.closed = False  # the CP is stopping: no more logons

    def admit(self, proto: TerminalProtocol, name: str, last_reply: int | None, loop: asyncio.AbstractEventLoop) -> bool:
        """True: handle this hello now. False: it was queued (and its connection's reading paused)."""
        self._loop = loop
        if self.closed:
            proto.abort()  # it logs on at the next CP
            return False
        if self._now(loop):
            return True
        self.newest[name] = proto
        self.deferred += 1
        self._wait(proto, name, last_reply, loop)
        return False

    def admit_bye(self, proto: TerminalProtocol, name: str, loop: asyncio.AbstractEventLoop) -> bool:
        """True: handle this bye now. False: it was queued (and its connection's reading paused);
        `proto.logoff()` runs in its turn."""
        self._loop = loop
        if self.closed or self._now(loop):
            return True  # a stopping CP: the logoff now, as before
        self.deferred_byes += 1
        self._wait(proto, name, BYE, loop)
        return False

    def admit_lost(self, proto: TerminalProtocol, name: str, loop: asyncio.AbstractEventLoop) -> bool:
        """True: the lost connection's terminal_lost now. False: it was queued; it runs in its turn."""
        self._loop = loop
        if self.closed or self._now(loop):
            return True
        self.deferred_losses += 1
        self._wait(proto, name, LOST, loop)  # (its reading is over: the pause does nothing)
        return False

    def _now(self, loop: asyncio.AbstractEventLoop) -> bool:
        if not self.queue and self.inline < BURST:
            self.inline += 1
            self._mark_turn(loop)
            return True
        return False

    def _wait(self, proto: TerminalProtocol, name: str, what: int | None | object, loop: asyncio.AbstractEventLoop) -> None:
        proto.pause_reading()
        self._enqueue((proto, name, what), loop)

    def _turned(self) -> None:
        super()._turned()
        self.inline = 0

    def _goes_on(self) -> bool:
        return not self.closed

    def _take(self, item: Queued) -> None:
        proto, name, what = item
        if what is LOST:
            self._step(proto, name, what)
            return
        if what is not BYE:  # a hello
            if self.newest.get(name) is proto:
                del self.newest[name]
            elif not proto.closed and proto.peer_gone():  # its terminal connected again meanwhile: that one counts
                proto.abort()
            # (else both are there, a duplicate device, say: this one is welcomed, as
            # outside a storm, and the newer is refused already_connected at its turn)
        if not proto.closed:  # (a bye's connection lost meanwhile: the logoff was done then)
            term = proto.term  # (a hello's: None; a bye's may be at its held bound, not to be read)
            if term is None or not term.paused:
                proto.resume_reading()  # first: a logon may pause it again (the held bound)
            self._step(proto, name, what)

    @staticmethod
    def _step(proto: TerminalProtocol, name: str, what: int | None | object) -> None:
        """One queued logon (`what`: its last_reply), logoff (BYE) or loss (LOST: its session
        closes, unless a new connection took its place); what it raises ends that connection
        only, as inline."""
        try:
            if what is LOST:
                term = proto.term
                if term is not None and term.conn is proto:
                    proto.cp.terminal_lost(term)
            elif what is BYE:
                proto.logoff()
            else:
                proto.logon(name, what if isinstance(what, int) else None)
        except ProtocolError as exc:
            proto.protocol_error(exc)
        except Exception:  # a defect: logged, and this terminal reconnects
            event = "terminal_lost_failed" if what is LOST else "terminal_logoff_failed" if what is BYE else "terminal_logon_failed"
            log.exception(event, terminal=name[:64], peer=proto.peer)
            proto.abort()

    def close(self, step_lost: bool = True) -> None:
        """The CP stops: no more logons; the connections still waiting are dropped (they log on
        at the next CP; a terminal whose bye waited is logged off as its connection goes, unless
        not `step_lost`: a superseded CP, which sends nothing more)."""
        self.closed = True
        for h in (self._slice, self._new_turn):
            if h is not None:
                h.cancel()
        self._slice = self._new_turn = None
        while self.queue:
            proto, name, what = self.queue.popleft()
            if what is LOST:
                if step_lost:
                    self._step(proto, name, what)  # its session closes as any lost terminal's does at a stop
            else:
                proto.abort()
        self.newest.clear()
