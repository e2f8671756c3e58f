"""When each message of a load run was sent and answered, and the pause an operation caused.

`Timeline` keeps one entry per answered message (send time, first-reply time,
terminal index) in compact arrays (20 bytes a message), so that after the run
the pause around any moment can be measured exactly:

- **in flight at the operation**: messages sent before it and answered after it
  (or never);
- **worst pause**: the reply latency of every message in flight at the
  operation or sent within `after_s` after it — the maximum and the 99th
  percentile over those messages. This is the headline of a failover or a
  switchover: the longest any one terminal waited for an answer;
- **every terminal served again**: from the operation to the moment the last
  terminal that had something in flight at it got its reply (the last reply to
  a message in flight at the operation); `None` if nothing was in flight, or a
  reply never came (`unanswered` tells which).

Apart from the messages, `BackTimes` keeps when each terminal's session opened (a logon) or
was switched to another active: **every terminal back** after an operation that disconnects or
switches them all (a CP restart, a CP machine's loss, a failover) is when the last terminal had
one of those after it, as the terminals themselves saw it (`None` while one never had).

A message's send time is when it was due: one whose turn came while its
terminal was not logged on (a conventional failover disconnected it) or its
window was full waits before it can go out, and that wait is part of its reply's
latency (what the terminal's user saw), not left out of it.

Times are on the monotonic clock of the process; `wall_offset` turns them into
wall-clock seconds for reports.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

NEVER = math.inf


class Timeline:
    __slots__ = ("sent", "replied", "term")

    def __init__(self) -> None:
        self.sent = array("d")
        self.replied = array("d")
        self.term = array("I")

    def __len__(self) -> int:
        return len(self.sent)

    def add(self, sent: float, replied: float, term: int) -> None:
        self.sent.append(sent)
        self.replied.append(replied)
        self.term.append(term)

    def unanswered(self, sent: float, term: int) -> None:
        """A message that never got a reply (it fails the verdict; here it never ends its pause)."""
        self.add(sent, NEVER, term)

    def steady_p99(self, t_op: float, before_s: float = 5.0) -> float | None:
        """p99 latency of the messages sent and answered in the `before_s` seconds before `t_op`."""
        lat = sorted(r - s for s, r in zip(self.sent, self.replied, strict=False) if t_op - before_s <= s and r <= t_op)
        return lat[max(0, math.ceil(len(lat) * 0.99) - 1)] if lat else None

    def window(self, t_op: float, after_s: float = 1.0) -> dict[str, Any]:
        """The pause around `t_op` (same clock as the entries); see the module docstring."""
        waits: list[float] = []
        in_flight = 0
        terms: set[int] = set()
        last_reply = t_op
        unanswered = 0
        horizon = t_op + after_s
        # where the worst pause was: the longest wait of the messages in flight at the operation
        # (index 0), then of those sent in each 100 ms after it
        buckets = [0.0] * (1 + math.ceil(after_s * 10))
        worst_sent: float | None = None
        worst_wait = -1.0
        for s, r, k in zip(self.sent, self.replied, self.term, strict=False):
            if s <= t_op < r:
                in_flight += 1
                terms.add(k)
                if r > last_reply:
                    last_reply = r
            elif not t_op <= s <= horizon:
                continue
            if r == NEVER:
                unanswered += 1
            else:
                w = r - s
                waits.append(w)
                b = 0 if s <= t_op else min(len(buckets) - 1, 1 + int((s - t_op) * 10))
                if w > buckets[b]:
                    buckets[b] = w
                if w > worst_wait:
                    worst_wait, worst_sent = w, s
        waits.sort()
        worst = None if unanswered else (waits[-1] if waits else None)
        p99 = waits[max(0, math.ceil(len(waits) * 0.99) - 1)] if waits and not unanswered else None
        return {
            "messages": len(waits) + unanswered,
            "in_flight": in_flight,
            "terminals_in_flight": len(terms),
            "steady_p99_ms": _ms(self.steady_p99(t_op)),
            "unanswered": unanswered,
            "worst_ms": _ms(worst),
            "p99_ms": _ms(p99),
            "all_served_ms": None if not in_flight or last_reply == NEVER else _ms(last_reply - t_op),
            "worst_sent_ms": _ms(None if worst_sent is None else worst_sent - t_op),  # < 0: in flight at it
            "worst_by_100ms": [round(w * 1000.0, 1) for w in buckets],
        }


class BackTimes:
    """When each terminal (by its index in the run) had its session opened or switched."""

    __slots__ = ("at", "terminals")

    def __init__(self, terminals: int) -> None:
        self.terminals = terminals
        self.at: dict[int, array[float]] = {}  # a few entries a terminal: one per logon or switch

    def add(self, term: int, now: float) -> None:
        a = self.at.get(term)
        if a is None:
            a = self.at[term] = array("d")
        a.append(now)

    def after(self, t_op: float) -> dict[str, Any]:
        """`all_back_ms`: from `t_op` until the last terminal was back (its first logon or switch
        after it); None, with `not_back` the count, while some terminal had neither."""
        last = t_op
        missing = self.terminals - len(self.at)
        for a in self.at.values():
            first = next((t for t in a if t >= t_op), None)
            if first is None:
                missing += 1
            elif first > last:
                last = first
        return {"all_back_ms": None if missing else _ms(last - t_op), "not_back": missing}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 3)
