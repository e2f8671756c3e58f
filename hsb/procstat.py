"""`/proc/PID/stat` read one way (Linux), for the few places that ask the kernel about a process:
hsbcpd's master about its dying worker, hsbctl about a sandbox's recorded pids."""

from __future__ import annotations

from pathlib import Path

PF_EXITING = 0x4  # flags: the process is exiting
PF_KTHREAD = 0x00200000  # flags: a kernel thread
STATE, PPID, FLAGS, EXIT_CODE = 0, 1, 6, 49  # indexes into `fields()` (proc(5)'s numbering less 3)


def fields(pid: int) -> list[str] | None:
    """The fields after the command's name (its state first), or None if there is no such process.
    (The name may hold spaces and parentheses: the last ")" ends it.)"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str | None:
    """One letter (R, S, D, Z, ...), or None if there is no such process."""
    f = fields(pid)
    return f[STATE] if f else None
