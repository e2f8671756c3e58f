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
first out: while it holds anything, every new handshake step joins it. One process, one loop:
the state is this module's, made again when another loop asks (tests).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol


class Waiting(Protocol):
    def tls_turn(self) -> None:
        """Its turn: run the handshake on the bytes kept, read again."""


TURN_S = 0.002  # seconds of handshakes run inline in one turn of the loop
SLICE_S = 0.002  # seconds of queued handshakes per turn


class Handshakes:
    __slots__ = ("queue", "spent", "deferred", "_loop", "_new_turn", "_slice")

    def __init__(self) -> None:
        self.queue: deque[Waiting] = deque()
        self.spent = 0.0  # seconds of handshakes this turn
        self.deferred = 0  # handshake steps that waited in the queue (tests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_turn: asyncio.Handle | None = None
        self._slice: asyncio.Handle | None = None

    def admit(self, conn: Waiting, loop: asyncio.AbstractEventLoop) -> bool:
        """True: run this handshake step now. False: it was queued (the caller keeps its bytes and
        stops reading it); `conn.tls_turn()` is called in its turn."""
        if loop is not self._loop:  # (another loop: what was queued on the last one is gone with it)
            self.queue.clear()
            self.spent = 0.0
            self._new_turn = self._slice = None
            self._loop = loop
        if not self.queue and self.spent < TURN_S:
            return True
        self.queue.append(conn)
        self.deferred += 1
        if self._slice is None:
            self._slice = loop.call_soon(self._run)
        return False

    def charge(self, seconds: float) -> None:
        """A handshake step took `seconds` (inline or in its turn)."""
        self.spent += seconds
        if self._new_turn is None and self._loop is not None:
            self._new_turn = self._loop.call_soon(self._turned)

    def _turned(self) -> None:
        self._new_turn = None
        self.spent = 0.0

    def _run(self) -> None:
        self._slice = None
        q = self.queue
        until = time.perf_counter() + SLICE_S
        try:
            while q:
                q.popleft().tls_turn()
                if time.perf_counter() >= until:
                    break
        finally:  # the rest wait for the next slice, whatever became of this one
            if q and self._loop is not None:
                self._slice = self._loop.call_soon(self._run)


HANDSHAKES = Handshakes()
