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


def watchdog_too_short(blocking_s: float) -> str | None:
    """Why systemd's watchdog may kill a daemon whose pinging loop can wait `blocking_s` on one
    operation (hsbd's HA loop on the takeover file's storage, up to `storage_timeout`), or None:
    the loop must ping within WatchdogSec, and pings at half of it."""
    every = watchdog_every()
    if every is None or blocking_s < every:
        return None
    return (
        f"takeover.storage_timeout {blocking_s:g} s is not below half of the unit's WatchdogSec ({2 * every:g} s): a hung"
        " mount can stop the HA loop long enough for systemd to kill this daemon; raise WatchdogSec above"
        f" {2 * blocking_s:g} s (systemctl edit) or lower storage_timeout"
    )


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
