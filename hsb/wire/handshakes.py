"""TLS handshakes sliced: the server side of a handshake (hsb.wire.tlsio, run by
hsb.wire.conn.FramedProtocol inside its `data_received`) is paid for in the event loop's own
time, about 0.25 ms of CPU a ClientHello (0.6 ms with a client certificate to check). When
thousands of terminals come back at once over TLS, libuv hands the loop thousands of
ClientHellos in one poll: run inline they held it for 0.65 s (2,000) to 1.9 s (5,000), while the
hosts' heartbeats wait (their timeouts are 0.5 s). The plaintext hellos behind them are sliced
for the same reason (hsb.cp.logons).

So a turn of the loop runs handshake steps inline for at most TURN_S of CPU; past that, a
connection's handshake bytes are kept in its TLS state, its reading stops, and it waits in a
queue worked off SLICE_S at a time with the loop turning in between. The queue is first in,
first out: while it holds anything, every new handshake step joins it.

Except the links that go first (`FramedProtocol.tls_first`: host, peer and admin links, a
handful): theirs run inline within the turn's TURN_S whatever the terminals' queue holds
(while none of theirs waits), and otherwise wait at the head of the queue, behind their own
kind only. A CP restarted with
10,000 TLS terminals queued (5 s of handshakes) would otherwise make the active's host link
wait past its handshake timeout, and past the lease it has to register again in.

One process, one loop: the state is this module's, made again when another loop asks (tests).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from hsb.slices import SlicedQueue


class Waiting(Protocol):
    def tls_turn(self) -> None:
        """Its turn: run the handshake on the bytes kept, read again."""


TURN_S = 0.002  # seconds of handshakes run inline in one turn of the loop (queued: hsb.slices.SLICE_S)


class Handshakes(SlicedQueue[Waiting]):
    __slots__ = ("spent", "deferred", "first")

    def __init__(self) -> None:
        super().__init__()
        self.spent = 0.0  # seconds of handshakes this turn
        self.deferred = 0  # handshake steps that waited in the queue (tests)
        self.first = 0  # the queue's first this many are of links that go first

    def admit(self, conn: Waiting, loop: asyncio.AbstractEventLoop, first: bool = False) -> bool:
        """True: run this handshake step now. False: it was queued (the caller keeps its bytes and
        stops reading it); `conn.tls_turn()` is called in its turn. `first`: a link that goes
        ahead of the terminals (the module docstring)."""
        if loop is not self._loop:
            self._new_loop(loop)
        if not (self.first if first else self.queue) and self.spent < TURN_S:
            return True
        self.deferred += 1
        self._enqueue(conn, loop, self.first if first else None)  # (near the head: cheap)
        if first:
            self.first += 1
        return False

    def charge(self, seconds: float) -> None:
        """A handshake step took `seconds` (inline or in its turn)."""
        self.spent += seconds
        if self._loop is not None:
            self._mark_turn(self._loop)

    def _turned(self) -> None:
        super()._turned()
        self.spent = 0.0

    def _new_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        super()._new_loop(loop)
        self.first = 0

    def _take(self, conn: Waiting) -> None:
        if self.first:  # (taken from the head: one of those that go first)
            self.first -= 1
        conn.tls_turn()


HANDSHAKES = Handshakes()
