"""Running measurements for the load generator: reply latency and the service gap.

`LatencyHistogram` keeps log-spaced buckets (about 1 % wide) instead of every
sample, so a long run at a high rate costs a few kilobytes, not one float per
message; percentiles are accurate to about 1 %, the maximum is exact.

`GapTracker` measures the *service gap* of the SPEC: the longest stretch during
which no terminal got a reply while messages were outstanding. It is fed the
moments a new message becomes outstanding and the moments a first reply
arrives, all on the monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_STEP = math.log(1.01)  # bucket width: 1 %
_FLOOR_US = 1.0  # anything faster than 1 µs lands in bucket 0


class LatencyHistogram:
    """Log-bucketed latency samples (seconds in, milliseconds out)."""

    __slots__ = ("_counts", "count", "total", "max", "min")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        idx = int(math.log(us / _FLOOR_US) / _STEP) if us > _FLOOR_US else 0
        counts = self._counts
        counts[idx] = counts.get(idx, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds < self.min:
            self.min = seconds

    def merge(self, other: LatencyHistogram) -> None:
        for idx, n in other._counts.items():
            self._counts[idx] = self._counts.get(idx, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def percentile(self, p: float) -> float | None:
        """The `p`-th percentile (0..100) in seconds, or None with no samples."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for idx in sorted(self._counts):
            seen += self._counts[idx]
            if seen >= rank:
                if idx == 0:
                    mid = _FLOOR_US
                else:
                    mid = _FLOOR_US * math.exp((idx + 0.5) * _STEP)
                # Never report more than the real maximum or less than the minimum.
                return min(max(mid / 1e6, self.min), self.max)
        return self.max  # pragma: no cover - rank <= count always hits

    def summary_ms(self) -> dict[str, float | None]:
        """{"p50", "p99", "max", "mean"} in milliseconds (None with no samples)."""

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        return {
            "p50": ms(self.percentile(50)),
            "p99": ms(self.percentile(99)),
            "max": ms(self.max if self.count else None),
            "mean": ms(self.total / self.count if self.count else None),
        }


@dataclass(slots=True)
class Gap:
    """One stretch without replies: duration and its bounds on the monotonic clock."""

    seconds: float = 0.0
    start: float | None = None
    end: float | None = None


class GapTracker:
    """Longest stretch with messages outstanding and no reply arriving.

    A stretch starts when a message becomes outstanding while none was, or at
    a reply after which some remain outstanding; it ends at the next reply.
    `top` keeps the TOP longest stretches (longest first), so a benchmark can
    tell the gap an operation caused from the run's other stretches.
    """

    TOP = 64
    __slots__ = ("outstanding", "_since", "longest", "top")

    def __init__(self) -> None:
        self.outstanding = 0
        self._since: float | None = None
        self.longest = Gap()
        self.top: list[Gap] = []

    def sent(self, now: float) -> None:
        """A new message became outstanding at `now`."""
        self.outstanding += 1
        if self._since is None:
            self._since = now

    def replied(self, now: float) -> None:
        """The first reply to an outstanding message arrived at `now`."""
        self._close(now)
        if self.outstanding > 0:
            self.outstanding -= 1
        self._since = now if self.outstanding > 0 else None

    def finish(self, now: float) -> None:
        """End of the run: a stretch still open (messages never answered) counts up to `now`."""
        if self._since is not None and self.outstanding > 0:
            self._close(now)
            self._since = now

    def _close(self, now: float) -> None:
        since = self._since
        if since is None:
            return
        d = now - since
        top = self.top
        if len(top) < self.TOP or d > top[-1].seconds:
            g = Gap(d, since, now)
            top.append(g)
            top.sort(key=lambda x: -x.seconds)
            del top[self.TOP :]
            if d > self.longest.seconds:
                self.longest = g
