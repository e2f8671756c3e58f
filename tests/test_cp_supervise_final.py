"""A supervised CP's worker that ends for good (hsb.cp.supervise's `mark_final`): one that dies
or fails while it stops (superseded, or a clean stop) is not forked again, and the master, or the
exit watchdog of a stop that then hangs, exits with the code meant (75: systemd's
RestartPreventExitStatus holds). Child scripts in a process of their own."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import python_lines
from tests.support.supervised import numbered_work, outs

pytestmark = pytest.mark.timeout(120)


def test_a_worker_that_dies_while_it_ends_for_good_is_not_forked_again() -> None:
    """A worker that had begun to end for good (superseded, exit 75 meant) and then died of a
    signal (an OOM kill while it stopped): the master forked another, on listeners already shut
    down, which took the journal back from the newer CP. It exits with the code meant instead
    (75: systemd's RestartPreventExitStatus holds). Run in a process of its own."""
    out = python_lines(
        "import os, signal, sys",
        "from hsb.cp import supervise",
        "def work(info):",
        "    os.write(1, f\"OUT worker {info['restarts']}\\n\".encode())",
        "    supervise.mark_final(75)",
        "    os.kill(os.getpid(), signal.SIGKILL)",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert outs(out) == ["worker 0", "master 75"], out
    assert "cp_worker_died_ending" in out and "cp_worker_died " not in out, out


def test_a_superseded_cp_whose_failed_stop_then_hangs_exits_75_at_the_watchdog() -> None:
    """A superseded CP (75 meant) whose stop fails says so through die(), which arms the exit
    watchdog with 1: a teardown that then hangs past its grace (a thread in a blocked write to a
    mount in trouble) exited 1, which systemd starts again, to take the journal back from the
    newer CP. The watchdog exits with the code meant. Run in a process of its own."""
    code = "\n".join(
        [
            "import threading",
            "from hsb import cli",
            "from hsb.cp import supervise",
            "supervise.mark_final(75)",
            "cli.exit_watchdog(1, 0.2)  # (as die() arms it)",
            "threading.Event().wait(30)  # a teardown that hangs",
        ]
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert "exiting with 75 now" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize(
    ("meant", "end", "master", "event"),
    [
        (75, "raise RuntimeError('EIO closing the journal')", 75, "cp_stop_failed"),
        (0, "os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL, "cp_worker_died_stopping"),
        (0, "return 1", 1, None),
    ],
)
def test_a_worker_that_fails_or_dies_while_it_stops_is_not_forked_again(tmp_path: Path, meant: int, end: str, master: int, event: str | None) -> None:
    """A worker that had begun to end for good (`mark_final`) and then failed (a superseded one:
    an error in its stop exited 1, which systemd started again, and it took the journal back from
    the newer CP; now 75, as meant), or, in a clean stop, died of a signal or exited 1 (that
    status, no other worker; one forked again says so and exits 0). Run in a process of its own."""
    out = python_lines(
        "import os, signal, sys",
        "from hsb.cp import supervise",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    if n:",
        "        return 0",
        f"    supervise.mark_final({meant})",
        f"    {end}",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert outs(out) == ["worker 0", f"master {master}"], out
    assert event is None or event in out, out
    assert "cp_worker_died " not in out and "cp_worker_failed" not in out and "cp_worker_died_ending" not in out, out


def test_a_cp_that_fails_while_it_stops_superseded_exits_as_it_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a master too: hsbcpd's run ending in an error (or die()'s exit 1) after its stop
    began for good meaning 75 exits 75; before any such stop, the error is its own."""
    from hsb.cp import supervise

    def fail() -> int:
        raise SystemExit(1)

    from hsb import cli

    monkeypatch.setattr(cli, "MEANT_EXIT", 0)  # (and back after: mark_final sets it below)
    with pytest.raises(SystemExit):
        supervise.ending_as_meant(fail)
    supervise.mark_final(75)
    assert supervise.ending_as_meant(fail) == 75
    assert supervise.ending_as_meant(lambda: 1 // 0) == 75
    with pytest.raises(SystemExit):  # (its own exit, as meant)
        supervise.ending_as_meant(lambda: sys.exit(75))
    assert supervise.ending_as_meant(lambda: 75) == 75
