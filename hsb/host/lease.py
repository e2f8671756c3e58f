"""The active role's lease from the CP (docs/design.md, "One active: the lease").

The CP makes a host active; the host may *act* as the active (hand messages to
the service, answer `/active`, say "active" in status and metrics) only while
its lease is valid. The lease is renewed by the CP's answers to this host's
heartbeats, and it runs from the moment the answered heartbeat was *sent*:

    valid until = (send time of the newest heartbeat the CP answered) + lease

all on this host's boot clock (CLOCK_BOOTTIME: monotonic, and it counts a suspend of the
machine, which CLOCK_MONOTONIC does not: a host resumed after a suspend that outlasted its lease
must find it run out, not still running for what was left). The CP heard that heartbeat, so it heard
from this host no earlier than that send time, and it gives the role to
another host only after `host_timeout` of silence. With `host_timeout` ≥
`lease` + margin (the CP's config check), the old active's lease runs out,
on its own clock, before the CP can grant: however the link fails (one
direction first, a frozen process, a slow network), two hosts never both
hold a valid lease. Registration starts a lease the same way, from the time
`register` was sent.

One exception, by the spec's rule that a closed host link is grounds for a switch: the CP grants
at once when the active's link is closed by the other end, which is the host's own close (it
stops serving first) or its process's death. A reset that a middlebox sent to the CP alone looks
the same to the CP while the host, alive, still holds its lease for up to `lease`; the new active's
ACTIVE STARTUP on the peer link carries its epoch, and an active that hears a higher epoch than
its own drops its CP link at once (it stops serving) and registers again, for the CP to decide;
the overlap lasts only while the peer link is down too.

Sans-IO: the caller supplies the clock readings and sends the heartbeats.
"""

from __future__ import annotations

from collections import deque

from hsb.bootclock import boot_now

clock = boot_now  # the lease's clock (hsb.bootclock: it goes on while the machine is suspended)


class Lease:
    """Heartbeat bookkeeping and the lease's expiry (seconds on the boot clock, `clock()`)."""

    __slots__ = ("duration", "until", "_n", "_sent", "lapsed_at", "answered_at")

    KEEP = 256  # heartbeats remembered while unanswered (a lease is a few of them long)

    def __init__(self) -> None:
        self.duration = 0.0  # told by the CP (`lease` in registered / switch_granted)
        self.until = 0.0
        # the send time of the newest heartbeat the CP answered with an ack (it acks only a host
        # holding a role): a registration answered late (deferred) renews from it, not only from
        # the register's own send time, which may be a lease ago
        self.answered_at = 0.0
        self._n = 0
        self._sent: deque[tuple[int, float]] = deque()
        self.lapsed_at: float | None = None  # expiry noticed (the boot clock), until renewed

    def beat(self, now: float | None = None) -> int:
        """A heartbeat is being sent now: its number, to be answered by the CP."""
        self._n += 1
        self._sent.append((self._n, clock() if now is None else now))
        if len(self._sent) > self.KEEP:
            self._sent.popleft()
        return self._n

    def answered(self, n: int) -> bool:
        """The CP answered heartbeat `n`: renew from its send time. True if that extended the lease."""
        sent = self._sent
        while sent and sent[0][0] < n:
            sent.popleft()  # older ones can only give an earlier expiry
        if not sent or sent[0][0] != n:
            return False
        _, t = sent.popleft()
        self.answered_at = max(self.answered_at, t)
        return self.extend(t)

    def extend(self, sent_at: float) -> bool:
        """Renew from a frame sent at `sent_at` that the CP answered; True if the expiry moved."""
        until = sent_at + self.duration
        if until <= self.until:
            return False
        self.until = until
        return True

    def valid(self, now: float | None = None) -> bool:
        return (clock() if now is None else now) < self.until

    def remaining(self, now: float | None = None) -> float:
        return self.until - (clock() if now is None else now)

    def reset(self) -> None:
        """The CP link is gone: whatever it answered no longer counts."""
        self.until = 0.0
        self.answered_at = 0.0
        self._sent.clear()
