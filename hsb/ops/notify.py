"""systemd readiness and watchdog notification (sd_notify protocol): silent unless NOTIFY_SOCKET
is set. With `WatchdogSec=` in the unit, `watchdog_every()` says how often to ping; the daemons
ping from their event loop's own periodic tick, so a loop that stops turning is restarted."""

from __future__ import annotations

import os
import socket


def notify(**fields: str | int) -> bool:
    """Send e.g. READY=1, STATUS=..., STOPPING=1 to systemd; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(msg)
        return True
    except OSError:
        return False


def watchdog_every() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


class Watchdog:
    """Call `tick()` from the event loop's periodic work; it pings at most every half interval."""

    def __init__(self) -> None:
        self.every = watchdog_every()
        self.last = 0.0

    def tick(self, now: float, force: bool = False) -> None:
        """`force`: now, however recent the last ping (a fresh interval for what comes next)."""
        if self.every is not None and (force or now - self.last >= self.every):
            self.last = now
            notify(WATCHDOG=1)
