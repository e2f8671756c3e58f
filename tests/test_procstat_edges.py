"""hsb.procstat on real processes: a command name with spaces and parentheses in it, the parent,
a zombie's state and wait status at the indexes hsbcpd's master and hsbctl read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsb import procstat

HOLD = "import sys\nopen('/proc/self/comm', 'w').write(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()\nsys.exit(3)\n"


def until(pred: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_name_with_parentheses_and_spaces_reads_right_and_a_zombie_gives_its_exit_status() -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLD, "a) R 1 (b"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        f = procstat.fields(p.pid)
        assert f is not None
        assert procstat.state(p.pid) in ("S", "R")
        assert f[procstat.PPID] == str(os.getpid())
        assert not int(f[procstat.FLAGS]) & (procstat.PF_KTHREAD | procstat.PF_EXITING)
        assert p.stdin is not None
        p.stdin.close()  # it exits 3, a zombie until reaped
        until(lambda: procstat.state(p.pid) == "Z", "the child never became a zombie")
        z = procstat.fields(p.pid)
        assert z is not None and int(z[procstat.EXIT_CODE]) == 3 << 8
        assert int(z[procstat.FLAGS]) & procstat.PF_EXITING, "a zombie has exited: the flag hsbcpd's master reads"
    finally:
        p.kill()
        p.wait()
    assert procstat.fields(p.pid) is None and procstat.state(p.pid) is None


def test_a_kernel_thread_has_the_kernel_thread_flag_and_this_process_not() -> None:
    mine = procstat.fields(os.getpid())
    assert mine is not None and not int(mine[procstat.FLAGS]) & procstat.PF_KTHREAD
    comm = Path("/proc/2/comm")
    if not comm.exists() or comm.read_text().strip() != "kthreadd":
        pytest.skip("no kernel thread visible here (a PID namespace)")
    f = procstat.fields(2)
    assert f is not None and int(f[procstat.FLAGS]) & procstat.PF_KTHREAD


def test_a_stat_that_ends_before_the_name_does_reads_as_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read cut short (a process going as it is read) has no ")": no such process, not an IndexError."""

    class Cut:
        def __init__(self, path: str) -> None:
            self.path = path

        def read_text(self) -> str:
            return "1234 (hsbcpd"

    monkeypatch.setattr(procstat, "Path", Cut)
    assert procstat.fields(1234) is None
    assert procstat.state(1234) is None
