"""Whether a daemon was started under util-linux's `runuser` or `su` (by hand, as the hsb user).

Those pass a SIGTERM sent to them on to the daemon, wait 2 s and then SIGKILL it: a stop that
takes longer (an active's handover, replies in progress) is cut short, which the CP takes for a
crash. The daemons say so at their start (`started_under_su`, docs/operations.md §6)."""

from __future__ import annotations

import os

KILLERS = frozenset({"runuser", "su"})  # (sudo relays signals and waits: not one of them)
DEPTH = 3  # parent, grandparent (hsbcpd's worker: its master between), and a shell `su -c` ran


def _stat(pid: int) -> tuple[str, int] | None:
    """(comm, parent pid) of a process, from /proc; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        left, right = data.index(b"("), data.rindex(b")")  # (comm may hold spaces and parentheses)
        return data[left + 1 : right].decode(errors="replace"), int(data[right + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def killing_wrapper(program: str, pid: int | None = None) -> str | None:
    """The warning for a process (this one by default) that runs under runuser or su, or None."""
    at = os.getppid() if pid is None else pid
    for _ in range(DEPTH):
        if at <= 1:
            return None
        st = _stat(at)
        if st is None:
            return None
        comm, parent = st
        if comm in KILLERS:
            return (
                f"{program} runs under {comm} (pid {at}): a SIGTERM sent to {comm} is passed on and {program} is SIGKILLed 2 s"
                " later, which cuts a longer stop (a handover, replies in progress) short, a crash to the pair; start it from its"
                f" systemd unit, or with 'setpriv --reuid=hsb --regid=hsb --init-groups -- {program} …', and signal {program}'s"
                " own pid (docs/operations.md §6)"
            )
        at = parent
    return None
