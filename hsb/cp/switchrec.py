"""The CP's record of one switch (failover, planned switchover, promote): what happened at the
grant, and the pause the terminals saw after it.

At the grant, the terminals that hold acknowledged, unanswered messages are *in flight*:
the switch kept them waiting. `AfterSwitch` follows the replies after the grant until every
one of those messages is answered (or `DEADLINE_S` passes) and fills in the record:

- `first_reply_ms`, `first_redelivered_reply_ms`: grant → the first reply (to a re-delivered
  message);
- `all_served_ms`: grant → the moment the last terminal that had something in flight got the
  reply to the last message it had in flight at the grant (0 when nothing was in flight);
- `worst_pause_ms`, `p99_pause_ms`: the longest (99th percentile) time from the CP's ack to its
  reply, over every message answered from the grant until all were served: the messages in
  flight at the grant and those that arrived meanwhile. Idle time is not a pause: with nothing
  in flight the figures are None.

A message the CP answers itself with an error (too large for the new active's frames) no longer
waits, but its reply is no service: it counts in none of the figures above but `all_served_ms`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from hsb.cp.state import Term

log = structlog.get_logger("hsb.cp")

DEADLINE_S = 60.0  # stop following a switch's replies after this long
MAX_WAITS = 200_000  # waits kept for the percentile; beyond, only the maximum is exact


class AfterSwitch:
    """Follows the replies after one grant (see the module docstring)."""

    __slots__ = ("t0", "rec", "epoch", "left", "counting", "last", "deadline", "waits", "worst", "on_done")

    def __init__(self, t0: float, rec: dict[str, Any], on_done: Any = None) -> None:
        """Follows from the grant of epoch rec["epoch"] on; the flip sets each terminal's count
        in flight (`Term.flight`) as it reaches it and the totals at its end (`counted`)."""
        self.t0 = t0
        self.rec = rec
        self.epoch = rec["epoch"]
        self.on_done = on_done  # called with the finished record (the history entry gets the pause)
        self.left = 0  # terminals with something still in flight from the grant (once counted)
        self.counting = True  # the flip is still going: replies count, the record cannot end yet
        self.last = t0  # when the last terminal in flight was served
        self.deadline = t0 + DEADLINE_S
        self.waits: list[float] = []
        self.worst = 0.0
        rec.update(
            in_flight_terminals=None,
            in_flight_messages=None,
            first_reply_ms=None,
            first_redelivered_reply_ms=None,
            all_served_ms=None,
            worst_pause_ms=None,
            p99_pause_ms=None,
        )

    def counted(self, terminals: int) -> bool:
        """The flip is done: `terminals` had messages in flight at the grant (the record has the
        counts). True if the record ended here (nothing in flight, or all answered already)."""
        self.counting = False
        self.left += terminals  # less those already served during the flip
        if self.left <= 0:
            self.finish(self.last)
            return True
        return False

    def reply(self, term: Term, acked_at: float, redelivered: bool, now: float, served: bool = True) -> bool:
        """A reply went out for a message acknowledged at `acked_at`; True once the record is done.
        Not `served`: the CP's own error reply, which ends the message's wait and is no pause."""
        rec = self.rec
        if served and redelivered and rec["first_redelivered_reply_ms"] is None:
            rec["first_redelivered_reply_ms"] = _ms(now - self.t0)
        wait = now - acked_at
        if served and wait > self.worst:
            self.worst = wait
        if served and len(self.waits) < MAX_WAITS:
            self.waits.append(wait)
        if acked_at <= self.t0 and term.flight_epoch == self.epoch and term.flight > 0:
            term.flight -= 1
            if term.flight == 0:
                self.left -= 1
                self.last = now
        if self.counting:
            return False
        if self.left <= 0:
            self.finish(now)
            return True
        return self.expired(now)

    def expired(self, now: float) -> bool:
        """Past the deadline with terminals still not served: the record ends without them (also
        from the CP's tick: when no reply comes at all, a reply would never end it)."""
        if self.counting or now <= self.deadline:
            return False
        log.warning("switched_terminals_not_served", epoch=self.rec["epoch"], waiting=self.left)
        self.rec["not_served"] = self.left
        self.finish(None)
        return True

    def finish(self, now: float | None) -> None:
        rec = self.rec
        if now is not None:
            rec["all_served_ms"] = 0.0 if not rec["in_flight_terminals"] else _ms(now - self.t0)
        if self.waits:
            w = sorted(self.waits)
            rec["worst_pause_ms"] = _ms(self.worst)
            rec["p99_pause_ms"] = _ms(w[max(0, math.ceil(len(w) * 0.99) - 1)])
        self.waits = []
        if self.on_done is not None:
            self.on_done(rec)
        log.info(
            "switched_terminals_served",
            epoch=rec["epoch"],
            all_served_ms=rec["all_served_ms"],
            worst_pause_ms=rec["worst_pause_ms"],
            p99_pause_ms=rec["p99_pause_ms"],
            in_flight_terminals=rec["in_flight_terminals"],
            first_redelivered_reply_ms=rec["first_redelivered_reply_ms"],
        )


def _ms(s: float) -> float:
    return round(s * 1000.0, 3)


HISTORY_KEEP = 1000  # entries kept (and journalled in every checkpoint)
# Histogram bounds (seconds) of switch durations and worst pauses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, float("inf"))
KINDS = ("failover", "switchover", "promote", "undone")


class Histogram:
    """Counts per bucket and kind, for the Prometheus collector (hsb.ops.metrics)."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = {k: [0] * len(BUCKETS) for k in KINDS}
        self.sums = dict.fromkeys(KINDS, 0.0)

    def observe(self, kind: str, seconds: float) -> None:
        if kind not in self.counts:
            return
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[kind][i] += 1
                break
        self.sums[kind] += seconds


class History:
    """Every failover, switchover, promote and fence, kept by the CP (`hsbctl history`), in its
    journal so that it survives restarts: an `h` record per entry, the whole list in every
    checkpoint (hsb.cp.journal.recovery)."""

    def __init__(self, append: Any) -> None:
        self.entries: list[dict[str, Any]] = []
        self._append = append  # journal append of a record
        self.duration = Histogram()  # loss (or release) -> grant
        self.pause = Histogram()  # worst pause of the traffic in flight
        self.last_at: dict[str, float] = {}
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)  # switches by kind by this process (each from 0: increase() counts the first)

    def restore(self, entries: list[dict[str, Any]]) -> None:
        self.entries = list(entries)[-HISTORY_KEEP:]
        for e in self.entries:
            if e.get("kind") in KINDS:
                self.last_at[e["kind"]] = e.get("at", 0.0)

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        del self.entries[:-HISTORY_KEEP]
        self._append(["h", entry])
        kind = entry.get("kind", "")
        if kind in KINDS:
            self.last_at[kind] = entry["at"]
            self.counts[kind] = self.counts.get(kind, 0) + 1  # (a promote after a normal stop has no duration)
            if entry.get("duration_ms") is not None:
                self.duration.observe(kind, entry["duration_ms"] / 1000)

    @staticmethod
    def refused(ref: dict[str, Any] | None) -> dict[str, Any] | None:
        """A switch record's `refused_standby` as its entry keeps it: the terminals' names, the
        standby's reason for the first only (what `hsbctl history` says; the entries are in every
        checkpoint, and a reason may be 300 characters). An entry of an older hsbcpd has none."""
        if not ref or not ref.get("terminals"):
            return None
        named = [{"terminal": x["terminal"]} for x in ref["terminals"]]
        named[0]["reason"] = ref["terminals"][0]["reason"]
        return {**ref, "terminals": named}

    def switch_done(self, rec: dict[str, Any]) -> None:
        """The pause of a switch is known: the entry of its epoch gets it (and the journal)."""
        upd = {k: rec.get(k) for k in ("worst_pause_ms", "p99_pause_ms", "all_served_ms", "in_flight_terminals")}
        for e in reversed(self.entries):
            if e.get("epoch") == rec["epoch"] and e.get("kind") in KINDS:
                e.update(upd)
                self._append(["h", {"epoch": rec["epoch"], "update": upd}])
                if upd["worst_pause_ms"] is not None:
                    self.pause.observe(e["kind"], upd["worst_pause_ms"] / 1000)
                break
