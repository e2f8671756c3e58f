"""Whether a daemon's previous process ended cleanly (hsb.ops.runmark), said as the gauge
hsb_unclean_start, which HsbDaemonRestarting joins with the restarts so that planned restarts
(a rolling upgrade, config changes) page nobody, while a crash loop still does. Before it, three
restarts an operator made in 15 minutes paged as a crash loop (critical). In-process for the mark
itself; real hsbcpd and hsbd processes, stopped cleanly and SIGKILLed, for the gauge."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.ops import runmark
from hsb.ports import free_port
from tests.support.logrec import RecordingLog
from tests.support.procs import restart_cp, start_cp, until, wait_for

pytestmark = pytest.mark.timeout(90)


def gauge(http: str) -> float | None:
    """hsb_unclean_start from a daemon's /metrics (None: not said)."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5.0) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("hsb_unclean_start "):
                return float(line.split()[1])
    return None


def said(http: str) -> bool:
    """The daemon answers /metrics with the gauge (it listens again after a restart)."""
    try:
        return gauge(http) is not None
    except OSError:
        return False


def test_the_mark_says_a_death_a_clean_stop_and_nothing_it_cannot_know(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(runmark, "log", rec)
    mark = tmp_path / "host-a.run"
    assert runmark.started(mark) is False and mark.read_text().split() == ["running", str(os.getpid())]  # a first start
    assert runmark.started(mark) is True  # (the one before never said it stopped: it died)
    [said] = rec.events("started_after_unclean_end")
    assert said["level"] == "warning" and said["pid"] == str(os.getpid()), said
    runmark.stopped()
    assert mark.read_text().split()[0] == "stopped" and runmark.started(mark) is False
    assert runmark.started(None) is None and runmark.MARK.unclean is None
    runmark.stopped()  # (nothing to write: no error)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # (root writes anyway: a path under a file cannot be made)
            bad = tmp_path / "host-a.run" / "x.run"
        else:
            bad = ro / "x.run"
        assert runmark.started(bad) is None and runmark.MARK.unclean is None
        assert rec.events("run_mark_unwritable") or rec.events("run_mark_unreadable"), rec.entries
    finally:
        ro.chmod(0o700)


def test_hsbcpd_says_whether_it_started_after_a_death(tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    cp = start_cp(tmp_path / "cp", terminals=2, journal="journal", durability="fsync", http_listen=http)
    try:
        assert gauge(http) == 0  # (a first start)
        cp.popen.send_signal(signal.SIGTERM)
        assert cp.popen.wait(30) == 0
        cp = restart_cp(cp)
        assert gauge(http) == 0 and not cp.events("started_after_unclean_end")  # after a clean stop
        cp.popen.kill()
        cp.popen.wait(30)
        cp = restart_cp(cp)
        assert gauge(http) == 1 and cp.events("started_after_unclean_end")  # after SIGKILL
        marks = list((tmp_path / "cp").glob("journal.*.run"))
        assert len(marks) == 1 and not list((tmp_path / "cp" / "journal").glob("*run*")), marks  # (beside the journal, not in it)
    finally:
        cp.stop()


async def test_hsbd_says_whether_it_started_after_a_death(sb: Any) -> None:
    info = await sb(terminals=3)
    d = Path(info["dir"])
    http = next(h["http"] for h in info["hosts"] if h["name"] == "host-b")

    def restart_b() -> None:
        sandbox.start_host(d, "host-b", "standby")

    assert gauge(http) == 0
    pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
    os.kill(pid, signal.SIGTERM)  # a standby's stop: clean, exit 0
    wait_for(lambda: not sandbox._alive(pid), 30, what="host-b stopped")
    await asyncio.get_running_loop().run_in_executor(None, restart_b)
    await until(lambda: said(http), 10, what="host-b's metrics")
    assert gauge(http) == 0
    pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not sandbox._alive(pid), 30, what="host-b dead")
    await asyncio.get_running_loop().run_in_executor(None, restart_b)
    await until(lambda: said(http), 10, what="host-b's metrics")
    assert gauge(http) == 1
    assert (Path(info["takeover"]).parent / "host-b.run").read_text().startswith("running ")
