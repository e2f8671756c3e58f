"""A bench stopped by SIGTERM or SIGINT stops what it started, as a normal exit does.

The daemons of a sandbox (and the load children) run in process sessions of their own: a bench
killed by a signal's default action left them running (one hsbd pair ran idle for 38 minutes
beside later benches). `stop_on_signals` turns the first SIGTERM or SIGINT into a
KeyboardInterrupt (`Interrupted`) in the main thread, so the bench unwinds through every
`finally` (each stops its sandbox: `_sandbox.sandbox_down`) and each task is cancelled;
`stop_children` is the net under them: any child process still running is stopped.
`_entry.run_or_render` does both for every bench that goes through it. SIGKILL unwinds
nothing: the daemons and load children die with the bench instead (PR_SET_PDEATHSIG, set at
their spawn: hsb.ctl.sandbox.die_with_this_process, `Child.start`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

from hsb import procstat

EXIT_GRACE = 5.0  # seconds a child has after SIGTERM (sandbox.down's own) before SIGKILL


class Interrupted(KeyboardInterrupt):
    """The bench got SIGTERM or SIGINT (`signum`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """From now on the first SIGTERM or SIGINT raises `Interrupted` in the main thread (SIGINT
    too when started in the background, where it was ignored); later ones are ignored, so that
    the unwinding's own teardown (which waits for daemons to exit) is not cut short. SIGKILL
    still ends the bench at once."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _unwind)


def default_signals() -> None:
    """SIGTERM and SIGINT as they were before `stop_on_signals` (the bench's sandboxes are down:
    nothing is left to unwind, and a signal must end the process, not raise where it lands)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _unwind(signum: int, frame: FrameType | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):  # (a handler of our own, not SIG_IGN: children would inherit that)
        signal.signal(sig, _ignore)
    raise Interrupted(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by the signal: 128 + its number (130: SIGINT)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def children() -> list[int]:
    """This process's child processes that still run (not those exited and not yet reaped)."""
    out = []
    for task in Path("/proc/self/task").iterdir():  # (a child is listed under the thread that made it)
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return [p for p in out if _running(p)]


def _running(pid: int) -> bool:
    return procstat.state(pid) not in (None, "Z", "X")


def stop_children(grace: float = EXIT_GRACE) -> list[int]:
    """SIGTERM each child process still running, with its process group when it leads one (a
    sandbox's daemon with its workers, a load child), and SIGKILL what is left after `grace`
    seconds; the pids it found."""
    kids = children()
    me = os.getpgrp()

    def send(sig: int) -> None:
        for pid in kids:
            try:
                if os.getpgid(pid) == pid != me:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_running(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    kids, found = [p for p in kids if _running(p)], kids
    send(signal.SIGKILL)
    return found
