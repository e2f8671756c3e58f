"""Fault injection: named crash points, off unless the environment asks for them.

Two ways to arm points (both off by default; with neither, `point()` is one
set lookup):
- at start: HSB_CRASH_POINTS="host.mid_batch_write,cp.mid_switch", with
  HSB_CRASH_SEED / HSB_CRASH_PROB (default 1.0) for a seeded choice of whether
  a visit kills, and HSB_CRASH_AFTER=N to skip the first N visits;
- at run time: HSB_CRASH_CONTROL=/path/file; on SIGUSR2 the process reads the
  file ("POINT[,POINT...] [SKIP]", or empty to disarm) and arms those points, then writes
  what it applied to FILE.applied (what a test waits on).

Points: host.mid_batch_write, host.between_batch_and_notice, host.mid_ring_group,
host.before_reply, host.mid_redelivery, cp.after_grant, cp.mid_switch,
cp.mid_redelivery, cp.between_reply_and_discard, and the CP journal's: cp.after_journal_write
(records durable, their acks not yet sent), cp.mid_journal_group (half a group commit's bytes
written), cp.after_reply_sent (a reply written to the terminal, not yet confirmed),
cp.mid_compaction (a settled segment about to be deleted), cp.mid_recovery (the journal read back,
nothing yet written or accepted), cp.reply_before_durable (a message handed to the active before
its record was durable, and answered, the record held back from the disk while the point is armed).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any

POINTS = (
    "host.mid_batch_write",
    "host.between_batch_and_notice",
    "host.mid_ring_group",
    "host.before_reply",
    "host.mid_redelivery",
    "cp.after_grant",
    "cp.mid_switch",
    "cp.mid_redelivery",
    "cp.between_reply_and_discard",
    "cp.after_journal_write",
    "cp.mid_journal_group",
    "cp.after_reply_sent",
    "cp.mid_compaction",
    "cp.mid_recovery",
    "cp.reply_before_durable",
)

_points = frozenset(p for p in os.environ.get("HSB_CRASH_POINTS", "").split(",") if p)
_rng = random.Random(int(os.environ.get("HSB_CRASH_SEED", "0") or 0))
_prob = float(os.environ.get("HSB_CRASH_PROB", "1.0") or 1.0)
_skip = int(os.environ.get("HSB_CRASH_AFTER", "0") or 0)
_control = os.environ.get("HSB_CRASH_CONTROL", "")

# Test only: HSB_TEST_DISABLE_SELF_FENCING=1 makes an hsbd ignore every reason to stop serving
# on its own (a fenced frame, a refusal by the CP, a lost CP link, a lapsed lease), so a test
# can show that the CP alone keeps an old active from getting anything accepted.
SELF_FENCING = os.environ.get("HSB_TEST_DISABLE_SELF_FENCING", "") != "1"


def armed(name: str) -> bool:
    """`name` is armed (a crash point that needs to prepare before it fires)."""
    return name in _points


def point(name: str) -> None:
    """Kill this process here if `name` is an armed crash point."""
    global _skip
    if name not in _points:
        return
    if _skip > 0:
        _skip -= 1
        return
    if _rng.random() < _prob:
        sys.stderr.write(f'{{"event": "crash_point", "point": "{name}", "pid": {os.getpid()}}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


_storage: Any = None  # hsb.takeover.faults.Faults, created by install() when control is on


def storage_faults() -> Any:
    """The takeover-storage fault hook of this process (None unless HSB_CRASH_CONTROL is set)."""
    return _storage


def _rearm(*_: object) -> None:
    """SIGUSR2: apply the control file.

    A line "storage delay S | storage hold | storage eio | storage corrupt N | storage clear"
    sets a takeover-storage fault; any other line is "POINT[,POINT...] [SKIP]" and
    re-arms the crash points (an empty file disarms them).
    """
    global _points, _skip
    try:
        with open(_control) as f:
            lines = [ln.split() for ln in f.read().splitlines() if ln.strip()]
        crash: list[str] = []
        for words in lines:
            if words[0] == "storage" and _storage is not None and len(words) > 1:
                _storage_fault(words[1:])
            else:
                crash = words
        if not any(w[0] == "storage" for w in lines):
            names = crash[0].split(",") if crash else []
            _points = frozenset(p for p in names if p in POINTS)
            _skip = int(crash[1]) if len(crash) > 1 and crash[1].isdigit() else 0
            if len(_points) != len(set(names)):
                return  # a name that is no crash point: not applied as asked, so not said to be
        # what was applied, for a test to wait on (no logging: this runs in a signal handler)
        with open(_control + ".applied", "w") as f:
            f.write("\n".join(" ".join(w) for w in lines))
    except Exception:  # a bad control file must not raise into whatever the main thread was running
        return


def _storage_fault(words: list[str]) -> None:
    import errno

    f = _storage
    kind, arg = words[0], (words[1] if len(words) > 1 else "")
    if kind == "delay":
        f.delay = float(arg or 0)
    elif kind == "hold":
        f.hold()
    elif kind == "eio":
        f.error = errno.EIO
    elif kind == "corrupt":
        f.corrupt_reads = int(arg or 1)
    elif kind == "clear":
        f.error = None
        f.corrupt_reads = 0
        f.release()


def install() -> None:
    """Enable run-time arming when HSB_CRASH_CONTROL is set (call once at daemon start)."""
    global _storage
    if _control:
        from hsb.takeover.faults import Faults

        _storage = Faults()
        signal.signal(signal.SIGUSR2, _rearm)
