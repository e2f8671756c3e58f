"""`hsbcpd --supervise` as the tests drive it (tests/test_cp_supervise*.py): a master's
children and its worker, a process gone, the conftest's `supervised` (a master started on a
config of its own, every process killed at the end), and the OUT lines and worker count of the
child scripts run in a process of their own."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from tests.support.procs import Proc, cp_config, spawn, wait_for


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux: /proc/PID/task/PID/children)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def worker_of(master: int, not_: int = 0, timeout: float = 10.0) -> int:
    """The master's worker (one other than `not_`), once there is one."""

    def find() -> int | None:
        kids = [p for p in children(master) if p != not_]
        return kids[0] if kids else None

    pid: int = wait_for(find, timeout, what=f"a worker of {master}")
    return pid


def gone(pid: int) -> bool:
    return not sandbox._alive(pid)


def supervised_cps(tmp_path: Path) -> Iterator[Any]:
    """The conftest's `supervised`: start `hsbcpd --supervise` on a config of its own; every
    process is killed at the end."""
    procs: list[tuple[Proc, list[int]]] = []  # the masters

    def start(env: dict[str, str] | None = None, watchdog_pid: bool = False, code: str | None = None, **cp: Any) -> Proc:
        cfg = cp_config(tmp_path, terminals=5, **{"journal": "journal", **cp})
        # code: Python run instead of `-m hsb.cp`, which then calls hsbcpd's main itself
        argv = [sys.executable, *(("-c", code) if code else ("-m", "hsb.cp")), "--config", str(cfg), "--supervise"]
        if watchdog_pid:  # as systemd sets it: the unit's main process, the master
            argv = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv]
        p = spawn("hsbcpd", argv, tmp_path / "cp.log", env)
        procs.append((p, []))
        return p

    yield start
    for p, _ in procs:
        p.stop()  # SIGKILL to the master: its worker goes with it (PR_SET_PDEATHSIG) ...
    cfg = str(tmp_path / "cp.toml")
    for d in Path("/proc").iterdir():  # ... and is killed here anyway if it did not
        try:
            if d.name.isdigit() and cfg in (d / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def outs(out: str) -> list[str]:
    """The OUT lines of a worker and its master, which share stdout with the master's log lines:
    each OUT line is one write (os.write: a print of several values may be several writes, and a
    log line's newline landed in the middle of one), but it may land after a log line's text and
    before its newline."""
    return re.findall(r"OUT ([^\n]*)", out)


def numbered_work(tmp_path: Path) -> list[str]:
    """The lines that begin a child script's `def work(info):` with `n`, how many workers the
    master forked before this one (each worker adds one to a file in tmp_path: a fork shares no
    memory with the next)."""
    count = tmp_path / "workers"
    return [
        "from pathlib import Path",
        f"count = Path({str(count)!r})",
        "def work(info):",
        "    n = len(count.read_text()) if count.exists() else 0",
        "    count.write_text('x' * (n + 1))",
    ]
