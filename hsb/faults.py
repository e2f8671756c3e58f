"""Fault injection: named crash points, off unless the environment asks for them.

HSB_CRASH_POINTS="cp.after_grant,host.mid_batch_write" names the points;
HSB_CRASH_SEED and HSB_CRASH_PROB (default 1.0) make a seeded choice of whether
each visit kills the process. HSB_CRASH_AFTER=N skips the first N visits.
With the variable unset, `point()` is one set lookup.
"""

from __future__ import annotations

import os
import random
import signal
import sys

_POINTS = frozenset(p for p in os.environ.get("HSB_CRASH_POINTS", "").split(",") if p)
_RNG = random.Random(int(os.environ.get("HSB_CRASH_SEED", "0") or 0))
_PROB = float(os.environ.get("HSB_CRASH_PROB", "1.0") or 1.0)
_skip = int(os.environ.get("HSB_CRASH_AFTER", "0") or 0)


def enabled() -> bool:
    return bool(_POINTS)


def point(name: str) -> None:
    """Kill this process here if `name` is an armed crash point."""
    global _skip
    if name not in _POINTS:
        return
    if _skip > 0:
        _skip -= 1
        return
    if _RNG.random() < _PROB:
        sys.stderr.write(f'{{"event": "crash_point", "point": "{name}", "pid": {os.getpid()}}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
