"""Whether this daemon's previous process ended cleanly, so that a planned restart pages nobody.

A small file beside the daemon's state (hsbd: `<host name>.run` in the takeover file's folder;
hsbcpd: `<journal directory>.<machine's hostname>.run` beside its journal directory) says `running PID` from the start and `stopped PID` once
the process ends with exit status 0 (a stop, a handover, a release). A start that finds
`running` follows a process that died: a crash, SIGKILL, an OOM kill, the watchdog, or an exit
with an error. That is the gauge `hsb_unclean_start` (1; 0 after a clean stop or at a first
start), which the alert HsbDaemonRestarting joins with the process's restarts: three planned
restarts in 15 minutes (a rolling upgrade, config changes) no longer page as a crash loop.

Best effort: a mark that cannot be read or written (a read-only folder, no journal) says nothing
(the gauge is absent) and never stops a daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger("hsb.ops")


class _Mark:
    path: Path | None = None
    unclean: bool | None = None  # None: not known (no mark file)


MARK = _Mark()


def started(path: Path | None) -> bool | None:
    """Read the mark left by the previous process at `path` and say this one runs; whether that
    one died (None: not known)."""
    MARK.path, MARK.unclean = path, None
    if path is None:
        return None
    try:
        before = path.read_text(encoding="utf-8", errors="replace").split()
    except FileNotFoundError:
        before = []  # (a first start)
    except OSError as exc:
        log.info("run_mark_unreadable", path=str(path), error=str(exc), msg="hsb_unclean_start is not said: HsbDaemonRestarting counts every restart")
        MARK.path = None
        return None
    if not _write(path, "running"):
        MARK.path = None
        return None
    MARK.unclean = bool(before) and before[0] == "running"
    if MARK.unclean:
        log.warning(
            "started_after_unclean_end",
            path=str(path),
            pid=before[1] if len(before) > 1 else None,
            msg="the previous process did not stop cleanly (a crash, a kill, an exit with an error): its log and journalctl say why",
        )
    return MARK.unclean


def stopped() -> None:
    """This process ends cleanly (exit status 0): the next start is a planned one."""
    if MARK.path is not None:
        _write(MARK.path, "stopped")


def _write(path: Path, state: str) -> bool:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(f"{state} {os.getpid()}\n", encoding="utf-8")
        os.replace(tmp, path)  # (no fsync: a power loss at worst reads as one unclean end, as it was)
        return True
    except OSError as exc:
        log.info("run_mark_unwritable", path=str(path), error=str(exc), msg="hsb_unclean_start is not said: HsbDaemonRestarting counts every restart")
        return False
