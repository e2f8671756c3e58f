"""One reconnect backoff for every loop that reconnects (the host's CP link and peer link, the
takeover ring flusher, the terminal simulator): exponential, capped, with jitter, so that many
clients that lost the same server do not come back in lock step.

A library was considered (tenacity, backoff): they wrap a call to retry, while these are
long-lived loops that reset on success and wait on other events too; the few lines below are
the whole of it.
"""

from __future__ import annotations

import random


def doubling(first: float, cap: float, n: int) -> float:
    """`first` doubled `n` times, at most `cap` (n past 30 counts as 30: the cap long reached)."""
    return min(cap, first * 2.0 ** min(n, 30))


class Backoff:
    """delay(n) = min(cap, first * 2**n) * uniform(0.5, 1.5); `reset()` after a success."""

    __slots__ = ("first", "cap", "n", "_random")

    def __init__(self, first: float = 0.05, cap: float = 1.0, rng: random.Random | None = None) -> None:
        self.first = first
        self.cap = cap
        self.n = 0
        self._random = (rng or random.Random()).random

    def next(self) -> float:
        """The next wait, in seconds."""
        base = doubling(self.first, self.cap, self.n)
        self.n += 1
        return base * (0.5 + self._random())

    def reset(self) -> None:
        self.n = 0

    def slow_down(self) -> None:
        """From now on wait the cap each time (until `reset()`): trying sooner cannot help."""
        self.n = 30
