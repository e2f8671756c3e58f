"""A CP waiting to take over, or taking its journal over, in process and held where a test
wants it (tests/test_cp_waiting.py, tests/test_cp_takeover_steps.py, tests/test_cp_generations.py):
a waiting CP whose systemd is a socket of the test's, the watchdog pings read from that socket,
and the takeover's read of the journal held on its thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import SECRET, cp_config


def watchdog_pings(sd: Any) -> int:
    """The WATCHDOG=1 pings waiting on the test's systemd socket `sd` (non-blocking), read."""
    n = 0
    while True:
        try:
            n += sd.recv(256).count(b"WATCHDOG=1")
        except BlockingIOError:
            return n


def held_recovery(monkeypatch: pytest.MonkeyPatch, most: float) -> tuple[Any, Any]:
    """The takeover's read of the journal held on its thread (at most `most` s) until the test
    lets it go: (entered, release), two threading.Events."""
    import threading

    from hsb.cp import taking_over

    entered, release = threading.Event(), threading.Event()
    real = taking_over.recover  # type: ignore[attr-defined]  # (imported there: patched where the takeover looks it up)

    def slow_recover(d: Path, truncate: bool = True) -> Any:
        entered.set()
        release.wait(most)  # (on the takeover's thread: without it, the loop itself waits here)
        return real(d, truncate=truncate)

    monkeypatch.setattr(taking_over, "recover", slow_recover)
    return entered, release


def waiting_cp_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A CP of `takeover = "on_wake"` (not started) whose systemd is a datagram socket of the
    test's, with WatchdogSec=0.1 (a ping every 0.05 s): (the server, that socket, non-blocking)."""
    import socket

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    sock_path = tmp_path / "notify.sock"
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(str(sock_path))
    sd.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml")), sd
