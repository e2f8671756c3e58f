"""systemd's watchdog beside hsbd's storage timeout: the HA loop pings it, and waits on the
takeover file's storage inline for up to `storage_timeout`; a watchdog shorter than twice that
can kill the active on a hung mount, so the daemon says so at start (hsb.ops.notify)."""

from __future__ import annotations

import os

import pytest

from hsb.ops.notify import watchdog_every, watchdog_too_short

pytestmark = pytest.mark.timeout(10)


def test_a_watchdog_too_short_for_the_storage_timeout_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_too_short(30.0) is None  # no watchdog: nothing to say
    monkeypatch.setenv("WATCHDOG_USEC", str(10_000_000))  # WatchdogSec=10
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_every() == 5.0
    assert watchdog_too_short(2.0) is None  # the default storage_timeout fits
    why = watchdog_too_short(10.0)
    assert why is not None and "storage_timeout 10 s" in why and "WatchdogSec (10 s)" in why and "above 20 s" in why
