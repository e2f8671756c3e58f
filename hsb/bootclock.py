"""The boot clock: CLOCK_BOOTTIME, monotonic, and it goes on while the machine is suspended. A
lease (hsb.host.lease) and the CP's vouching for its generation check (hsb.cp.journal.store) run
on it, so a suspend runs both out instead of standing still."""

from __future__ import annotations

import time


def boot_now() -> float:
    """Seconds on the boot clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
