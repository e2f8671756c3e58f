"""A daemon that has decided to exit is gone soon after, even if its teardown hangs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

HANGS = """
import threading, time
from hsb.cli import exit_watchdog
exit_watchdog(75, seconds=0.3)
threading.Event().wait(30)  # a teardown that never ends
"""


@pytest.mark.timeout(20)
def test_a_hung_teardown_still_exits_with_the_decided_status() -> None:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", HANGS], capture_output=True, text=True, timeout=15)
    took = time.monotonic() - t0
    assert p.returncode == 75
    assert took < 10, f"took {took:.1f}s"
    assert "teardown took longer than 0.3s; exiting with 75 now" in p.stderr
    assert "Thread" in p.stderr  # every thread's stack, to find what hung
