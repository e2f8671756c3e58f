"""A stopped daemon's process ends promptly once its stop is done: the time from its last log line
(`host_stopped`, `cp_stopped`) to the process's exit is the interpreter's teardown only, never a
thread joined at exit, an executor's shutdown or a sleep (a planned stop, an upgrade, `hsbctl
sandbox down` and every test that stops daemons would pay it). Real processes, the sandbox: the
standby's stop, the active's with a standby (it hands over first) and without one, and hsbcpd
under its master (`--supervise`, master and worker). Each exit is seen on a pidfd, not polled.

(A walk-through measured 1.6-2 s here: that was `runuser`'s, which the daemons ran under: on a
signal util-linux's runuser and su pass it on, sleep 2 s, then SIGKILL the child. The daemons
themselves end within ~20 ms of their last line; docs/operations.md §6 says so.)"""

from __future__ import annotations

import datetime
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from tests.support.procs import log_events
from tests.support.supervised import worker_of

pytestmark = pytest.mark.timeout(90)

# From the last log line to the process's end: measured 8-20 ms for hsbd, 20-75 ms for hsbcpd's
# master (its worker's end, then its own), on a loaded two-core machine; a thread joined at exit
# or a sleep in the teardown is hundreds of ms or seconds.
LAST_LINE_TO_EXIT_S = 0.75
# SIGTERM to the end of a standby, which has nothing to wait for (no replies, nothing to hand over)
STANDBY_STOP_S = 1.5


def _when(line: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def stop(pid: int, log: Path, others: tuple[int, ...] = (), timeout: float = 30.0) -> tuple[list[dict[str, Any]], dict[int, float], float]:
    """SIGTERM `pid` and wait (pidfds, `timeout` at most) for it and `others` (a master's worker) to
    end: (the lines `log` gained, {pid: the wall time it ended}, the wall time of the SIGTERM)."""
    before = len(log_events(log))
    fds = {os.pidfd_open(p): p for p in (pid, *others)}
    ended: dict[int, float] = {}
    t0 = time.time()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < len(fds):
            left = deadline - time.monotonic()
            assert left > 0, f"pids {sorted(set(fds.values()) - set(ended))} still running {timeout} s after the SIGTERM"
            ready, _, _ = select.select([fd for fd, p in fds.items() if p not in ended], [], [], left)
            now = time.time()
            for fd in ready:
                ended[fds[fd]] = now
    finally:
        for fd in fds:
            os.close(fd)
    for p in (pid, *others):  # (the sandbox's children: reaped here, if nothing else did)
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
    return log_events(log)[before:], ended, t0


def assert_prompt(lines: list[dict[str, Any]], ended: float, last_event: str, who: str) -> None:
    assert lines, f"{who} logged nothing after its SIGTERM"
    last = lines[-1]
    assert last["event"] == last_event, f"{who}'s last line is {last['event']}, not {last_event}: {[x['event'] for x in lines]}"
    lag = ended - _when(last)
    assert lag < LAST_LINE_TO_EXIT_S, f"{who} ended {lag:.3f} s after its last line ({last_event}); at most {LAST_LINE_TO_EXIT_S} s"


async def test_the_standby_and_the_active_end_at_once_after_host_stopped(sb: Any) -> None:
    """The standby's stop, then the active's with a standby (a planned switchover first), then the
    new active's alone (the normal termination): each process gone well within a second of its
    `host_stopped`; the standby's whole stop too."""
    info = await sb(terminals=20)
    d = Path(info["dir"])
    st = sandbox.load_state(d)
    a, b = int(st["hosts"]["host-a"]["pid"]), int(st["hosts"]["host-b"]["pid"])

    lines, ended, t0 = stop(b, d / "host-b.log")
    assert_prompt(lines, ended[b], "host_stopped", "the standby")
    assert lines[-1]["role"] == "standby"
    assert ended[b] - t0 < STANDBY_STOP_S, f"the standby's stop took {ended[b] - t0:.3f} s"

    b = sandbox.start_host(d, "host-b", "standby")
    await sandbox.wait_started(d, "host-b", b)
    await sandbox.wait_established(d, 30.0)
    lines, ended, _ = stop(a, d / "host-a.log")
    assert "stopped_after_handover" in [x["event"] for x in lines], [x["event"] for x in lines]
    assert_prompt(lines, ended[a], "host_stopped", "the active handing over")

    lines, ended, _ = stop(b, d / "host-b.log")
    assert lines[-1].get("role") == "active", lines[-1]
    assert_prompt(lines, ended[b], "host_stopped", "the active alone")


async def test_hsbcpds_master_and_worker_end_at_once_after_cp_stopped(sb: Any) -> None:
    """SIGTERM to hsbcpd's master (as systemd sends it), hosts gone first: the worker logs
    `cp_stopped` and ends, then the master, both well within a second of that line."""
    info = await sb(terminals=20, supervise=True)
    d = Path(info["dir"])
    st = sandbox.load_state(d)
    for name in ("host-b", "host-a"):  # (the order `hsbctl sandbox down` stops them in)
        pid = int(st["hosts"][name]["pid"])
        lines, _, _ = stop(pid, d / f"{name}.log")
        assert lines and lines[-1]["event"] == "host_stopped", [x["event"] for x in lines]
    master = int(st["cp"]["pid"])
    worker = worker_of(master)
    lines, ended, _ = stop(master, d / "cp.log", others=(worker,))
    assert "cp_stopped" in [x["event"] for x in lines], [x["event"] for x in lines]
    stopped = next(x for x in lines if x["event"] == "cp_stopped")
    assert stopped["exit"] == 0, stopped
    for pid, who in ((worker, "hsbcpd's worker"), (master, "hsbcpd's master")):
        lag = ended[pid] - _when(lines[-1])
        assert lag < LAST_LINE_TO_EXIT_S, f"{who} ended {lag:.3f} s after the CP's last line ({lines[-1]['event']})"
