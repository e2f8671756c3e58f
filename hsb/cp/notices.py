"""The fast-switch notices (SPEC §5.4): after a grant every switched terminal is owed
`{"t":"switched"}` (or a session-open notice), one small socket write each.

Owns when they go out: they are *owed* from the grant (`Term.notice`; `CP._tell` sends a
terminal's notice ahead of any other frame to it), start once the new active's first reply
has gone out (service first), and are then written SLICE_S at a time with GAP_S between
slices, so replies are relayed meanwhile and the notices take about a quarter of a core at
most. They are informational, so they go slowly on purpose: each one makes the terminal's side
read and handle a frame too, and in the second after a switch the terminals' processes, both
hosts (the new standby re-establishing) and the CP share the machine. Written back to back, with
only a loop turn between slices, 19,000 of them kept both cores of the test machine busy for
0.7-1 s and the replies of that second waited for a CPU: the terminals' worst pause in a planned
switchover was 79-168 ms, against 60-116 ms paced so (BENCHMARKS.md, "The switch notices paced").

A notice costs one loopback TCP send, about 4 µs of kernel work on this machine, so 10,000
of them take ~42 ms from one thread even with no event loop at all. Writing them from
several threads at once was tried (os.write straight to the sockets while the loop thread
waits): slower here (90-150 ms against ~70), because the terminals' own process takes the
second core to read them and the writer threads then queue for the GIL (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from hsb.cp.state import Term

log = structlog.get_logger("hsb.cp")

SLICE_S = 0.001  # seconds of notice writing at a time (a write costs 4-30 µs here) ...
GAP_S = 0.003  # ... then this long for everything else: about a quarter of a core at most
DEFER_S = 0.1  # seconds after a grant at most before the notices start without a reply


class _Owed:
    """The switch notices owed after one grant."""

    __slots__ = ("terms", "rec", "t0", "timer", "started")

    def __init__(self, terms: list[Term], rec: dict[str, Any], t0: float) -> None:
        self.terms = terms
        self.rec = rec
        self.t0 = t0
        self.timer: asyncio.TimerHandle | None = None
        self.started = False


class Notices:
    """Switch notices owed after a grant; `CP` calls `owe` at the grant and `first_reply`."""

    def __init__(self) -> None:
        self._owed: _Owed | None = None  # not yet started

    def owe(self, terms: list[Term], rec: dict[str, Any], t0: float, wait_for_reply: bool) -> None:
        """`terms`: the flip's terminals; those with a notice set are owed it. Service first: the notices start once the new active's first reply has gone out (or
        DEFER_S after the grant if none comes; at once if nothing was waiting to be served)."""
        if self._owed is not None:  # a switch right after a switch: the older ones go now
            self._start(self._owed)
        n = self._owed = _Owed(terms, rec, t0)
        if rec.get("first_reply_ms") is not None:  # it came while the flip was still going
            wait_for_reply = False
        n.timer = asyncio.get_running_loop().call_later(DEFER_S if wait_for_reply else 0.0, self._start, n)

    def first_reply(self) -> None:
        """The new active's first reply is queued: the owed notices can start (after its write)."""
        if self._owed is not None:
            asyncio.get_running_loop().call_soon(self._start, self._owed)

    def _start(self, n: _Owed) -> None:
        if n.started:
            return
        n.started = True
        if n.timer is not None:
            n.timer.cancel()
        if self._owed is n:
            self._owed = None
        self._send(n, 0)

    def _send(self, n: _Owed, start: int) -> None:
        todo = n.terms
        i, end = start, len(todo)
        until = time.perf_counter() + SLICE_S
        while i < end:
            term = todo[i]
            i += 1
            frame, conn = term.notice, term.conn
            if frame is not None and conn is not None:
                term.notice = None
                conn.write_now(frame)
            if not i & 31 and time.perf_counter() > until:
                break
        if i < end:  # the next slice after GAP_S: replies are relayed in between
            asyncio.get_running_loop().call_later(GAP_S, self._send, n, i)
        else:
            rec = n.rec
            rec["notices_sent_ms"] = round((time.monotonic() - n.t0) * 1000, 3)
            log.info("switch_notices_sent", epoch=rec["epoch"], notices_sent_ms=rec["notices_sent_ms"], switched=rec["switched"])
