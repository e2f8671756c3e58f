"""What a load run counts as it goes (hsb.term.load): each terminal's events as the listener
sees them (sends, acks, replies and their kind, sessions, disconnects, refusals), the latency
histogram, the gaps in service and the times every terminal was back, for the report and the
progress lines."""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from hsb.term.client import WELCOMED, TerminalClient
from hsb.term.hopeless import Hopeless
from hsb.term.listener import Listener
from hsb.term.stats import GapTracker, LatencyHistogram
from hsb.term.timeline import BackTimes, Timeline
from hsb.wire.framing import ProtocolError

MAX_DEFERRED = 64  # sends a terminal owes (it could not send when they were due) at most


class LoadStats(Listener):
    """Counts the events of every terminal of a run (one shared listener)."""

    def __init__(self, terminals: int, target: str = "the CP", cert: str | None = None) -> None:
        self.terminals = terminals
        # before any terminal is welcomed: the answers no retry can change (hsb.term.hopeless);
        # `gave_up` is set (the cause, with its fix) once they leave no doubt, and the run ends
        self.hopeless = Hopeless(target, terminals, load=True, cert=cert)
        self.gave_up = asyncio.Event()
        self.last_connect_error: str | None = None  # the last failed connect's error (for a run never welcomed)
        self.sent = 0
        self.acked = 0
        self.replied = 0
        self.duplicates = 0
        self.unexpected = 0
        self.resent = 0
        self.disconnects = 0
        self.disconnect_causes: Counter[str] = Counter()  # those disconnects by why (TerminalClient.why_lost)
        self.dropped_at = array("d")  # when each of those disconnects came (monotonic)
        self.connect_failures = 0
        self.session_closed = 0
        self.switched = 0
        self.welcomed = 0
        self.sessions = 0
        self.protocol_errors = 0
        self.errors: Counter[str] = Counter()
        self.latency = LatencyHistogram()
        self.ack_latency = LatencyHistogram()
        self.gap = GapTracker()
        self.counting = True  # off once the run logs its terminals off
        self.sending = False  # in the sending phase
        self.refill = False  # closed loop: each first reply sends the terminal's next message
        self.replied_sending = 0  # first replies that arrived in the sending phase
        self.timeline = Timeline()  # send and reply time of every answered message
        self.back_times = BackTimes(terminals)  # when each terminal logged on or was switched
        self.owed_dropped = 0  # sends owed beyond MAX_DEFERRED a terminal: never made
        # sends owed, each its due time: by terminals whose window was full, whose writes were
        # paused (the CP did not read them), or not logged on
        self.deferred: dict[TerminalClient, deque[float]] = {}
        # owed sends go out until then (monotonic): the sending phase, and the first part of the
        # settle time (a terminal back late sends them, with time left for their answers)
        self.owed_until = math.inf
        self.all_welcomed = asyncio.Event()
        self.all_sessions = asyncio.Event()
        self.drained = asyncio.Event()
        if terminals == 0:
            self.all_welcomed.set()
            self.all_sessions.set()

    def on_sent(self, c: TerminalClient, msg_id: int, now: float) -> None:
        self.sent += 1
        self.gap.sent(now)

    def on_resent(self, c: TerminalClient, count: int, first: int = 0) -> None:
        self.resent += count

    def owing(self) -> bool:
        """Whether owed sends still go out now."""
        return self.counting and (self.sending or time.monotonic() < self.owed_until)

    def on_welcome(self, c: TerminalClient, first: bool) -> None:
        if first:
            self.welcomed += 1
            if self.welcomed >= self.terminals:
                self.all_welcomed.set()
        if c in self.deferred and self.owing():
            # logged on again: what it owes goes out after the resends (next turn of the loop),
            # also once the sending phase is over (a terminal a failover kept away until then)
            asyncio.get_running_loop().call_soon(self.on_welcome_hook, c)

    def on_session(self, c: TerminalClient, state: str, epoch: int, reason: str | None, first_open: bool) -> None:
        if state == "open" and self.counting:
            self.back_times.add(c.idx, time.monotonic())
        if first_open:
            self.sessions += 1
            if self.sessions >= self.terminals:
                self.all_sessions.set()
        elif state == "closed" and self.counting and not c.stopping:
            self.session_closed += 1

    def on_ack(self, c: TerminalClient, msg_id: int, first: bool) -> None:
        if first:
            self.acked += 1
            t0 = c.outstanding.get(msg_id)
            # send -> ack: what the CP's journal adds shows here (not one the logoff brings: it
            # waited for the logoff, `settled`)
            if t0 is not None and self.counting:
                self.ack_latency.add(time.monotonic() - t0)

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        if kind in ("first", "early"):
            now = time.monotonic()
            self.replied += 1
            if kind == "early":
                self.unexpected += 1
            if self.sending:
                self.replied_sending += 1
                if self.refill and c.can_send:
                    c.submit()
                elif self.refill and c.state == WELCOMED:  # its writes paused (the CP does not read): owed
                    self.defer(c, now)
                elif c in self.deferred and c.can_send:
                    self._owed_send(c)
            elif c in self.deferred and c.can_send and self.owing():  # owed from the sending phase
                self._owed_send(c)
            # after the settle (the logoff's answers) neither: it waited for the logoff, not the
            # service, and its entry in the timeline is the unanswered one (`settled`)
            if latency is not None and self.counting:
                self.latency.add(latency)
                self.timeline.add(now - latency, now, c.idx)
            if self.counting:  # (an answer the logoff brings opens no stretch of the service gap either)
                self.gap.replied(now)
                if self.gap.outstanding == 0:
                    self.drained.set()
        elif kind == "duplicate":
            self.duplicates += 1
        else:
            self.unexpected += 1

    def settled(self, clients: Sequence[TerminalClient]) -> None:
        """The settle's end: every message still without a reply, and every send owed and never
        made, enters the timeline unanswered, from when it was due (a send that waited, waited
        for its answer too). The run stops counting then: an answer the logoff brings is late,
        not added to the timeline a second time, nor its latency to the histograms, nor a stretch
        to the service gap (`on_reply`, `on_ack`): it waited for the logoff, not for the service."""
        for c in clients:
            for mid, t_sent in c.outstanding.items():
                self.timeline.unanswered(t_sent - c.waited.get(mid, 0.0), c.idx)
            for due in self.deferred.get(c, ()):
                self.timeline.unanswered(due, c.idx)  # due, and never sent: the run ended first
        self.counting = False

    def _owed_send(self, c: TerminalClient) -> None:
        owed = self.deferred[c]
        due = owed.popleft()
        if not owed:
            del self.deferred[c]
        c.submit(due=due)  # its latency counts from when it was due: the wait is the terminal's too

    def defer(self, c: TerminalClient, due: float) -> None:
        """`c`'s turn came (at `due`) with its window full, its writes paused (the CP did not read)
        or while it was not logged on: it sends as soon as it can."""
        owed = self.deferred.setdefault(c, deque())
        if len(owed) < MAX_DEFERRED:
            owed.append(due)
        else:
            self.owed_dropped += 1  # (never sent: reported as owed_unsent)

    def on_writable(self, c: TerminalClient) -> None:
        self.on_welcome_hook(c)  # (what it owes, as after a welcome)

    def on_welcome_hook(self, c: TerminalClient) -> None:
        if c in self.deferred and self.owing():
            while c in self.deferred and c.can_send:
                self._owed_send(c)

    def on_switched(self, c: TerminalClient, epoch: int) -> None:
        if self.counting:
            self.switched += 1
            self.back_times.add(c.idx, time.monotonic())

    def on_error(self, c: TerminalClient, code: str, msg: str) -> None:
        self.errors[code] += 1  # (also at the logoff: a refusal then is a broken promise too)
        if self.welcomed == 0 and self.counting:
            self._hopeless(self.hopeless.refusal(c, code, msg))

    def on_protocol_error(self, c: TerminalClient, exc: ProtocolError) -> None:
        self.protocol_errors += 1
        if self.welcomed == 0 and self.counting:
            self._hopeless(self.hopeless.protocol_error(exc.msg))

    def _hopeless(self, cause: str | None) -> None:
        if cause is not None:
            self.gave_up.set()

    def on_disconnect(self, c: TerminalClient, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
        if self.counting and welcomed:
            self.disconnects += 1
            self.disconnect_causes[c.why_lost(exc)] += 1
            self.dropped_at.append(time.monotonic())

    def on_connect_failed(self, c: TerminalClient, exc: BaseException, retry_in: float) -> None:
        if self.counting:
            self.connect_failures += 1
            self.last_connect_error = f"{type(exc).__name__}: {exc}"[:200]
            if self.welcomed == 0:
                self._hopeless(self.hopeless.connect_failed(exc))

    def snapshot(self, phase: str, elapsed: float) -> dict[str, Any]:
        return {
            "phase": phase,
            "elapsed": elapsed,
            "terminals": self.terminals,
            "welcomed": self.welcomed,
            "sessions": self.sessions,
            "sent": self.sent,
            "acked": self.acked,
            "replied": self.replied,
            "outstanding": self.gap.outstanding,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "disconnects": self.disconnects,
            "session_closed": self.session_closed,
            "connect_failures": self.connect_failures,
            "switched": self.switched,
        }
