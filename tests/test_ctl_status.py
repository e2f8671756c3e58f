"""`hsbctl status` over the admin links (issue 5 item 4): exit statuses and unreachable daemons."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from tests.support.procs import wait_for


def ctl(info: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], *args], capture_output=True, text=True, timeout=60)


async def test_status_exit_codes_and_unreachable(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    info = await sandbox.aup(d, terminals=10)
    loop = asyncio.get_running_loop()
    try:
        r = await loop.run_in_executor(None, ctl, info, "status", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["established"] is True
        assert {h["name"]: (h["role"], h["state"], h["reachable"]) for h in st["hosts"]} == {
            "host-a": ("active", "established", True),
            "host-b": ("standby", "established", True),
        }
        for key in ("epoch", "terminals", "held_messages", "last_switchover"):
            assert key in st["cp"]
        r = await loop.run_in_executor(None, ctl, info, "status")
        assert r.returncode == 0 and "ESTABLISHED" in r.stdout and "host-b" in r.stdout
        # standby gone: UNKNOWN (exit 3) naming it, what the others say, no traceback
        b_pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
        os.kill(b_pid, signal.SIGKILL)
        wait_for(lambda: not sandbox._alive(b_pid), 10, what="host-b dead")
        r = await loop.run_in_executor(None, ctl, info, "status")
        assert r.returncode == 3, r.stdout  # a daemon that cannot be asked: UNKNOWN
        assert (
            "SERVING WITHOUT A STANDBY" in r.stdout
            and "host2 at 127.0.0.1:" in r.stdout
            and "cannot be asked" in r.stdout
            and "Traceback" not in r.stdout + r.stderr
        )
        # CP gone too: still UNKNOWN (exit 3)
        os.kill(sandbox.load_state(d)["cp"]["pid"], signal.SIGKILL)
        r = await loop.run_in_executor(None, ctl, info, "status", "--json")
        assert r.returncode == 3
        st = json.loads(r.stdout)
        assert st["cp"]["reachable"] is False and st["established"] is False
        assert "Traceback" not in r.stderr
    finally:
        sandbox.down(d, timeout=2.0)


def test_status_without_a_target_is_a_one_line_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hsb.ctl", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("HSBCTL_CONFIG", "HSB_CTL_CONFIG")},
    )
    assert r.returncode == 3  # nothing could be asked: UNKNOWN, as monitoring plugins say for bad arguments
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "/etc/hsb/ctl.toml" in r.stderr


async def test_a_grant_a_host_reports_is_in_the_cps_part_too(tmp_path: Path, monkeypatch: Any) -> None:
    """The answers of one status are taken at slightly different moments: a host that
    reports a newer epoch than the CP's answer makes the CP be asked again."""
    from hsb.ctl import gather

    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    secret.chmod(0o600)
    cp_epochs = [3, 4]
    asked: list[str] = []

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        asked.append(addr)
        if addr == "cp:1":
            return {"data": {"role": "cp", "state": "serving", "epoch": cp_epochs.pop(0)}}
        epoch = 4 if addr == "b:1" else 3
        return {"data": {"name": addr, "role": "active" if addr == "b:1" else "standby", "state": "established", "epoch": epoch}}

    monkeypatch.setattr(gather, "ask", ask)
    st = await gather.status_all("cp:1", ["a:1", "b:1"], str(secret))
    assert st["cp"]["epoch"] == 4 and asked.count("cp:1") == 2
    # the same epoch everywhere: asked once
    cp_epochs[:] = [4]
    asked.clear()
    st = await gather.status_all("cp:1", ["b:1"], str(secret))
    assert st["cp"]["epoch"] == 4 and asked.count("cp:1") == 1


def test_a_restart_waits_out_a_process_that_is_still_exiting() -> None:
    """CI once restarted a host right after SIGKILL: the CP had seen its links close, but the
    process was not gone yet, and start_host refused. A dying process is waited out; one that
    keeps running is still refused."""
    slow = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), exit(0)))\nprint(flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert slow.stdout is not None and slow.stdout.readline() == b"\n"
        slow.terminate()  # it exits 0.5 s later
        steady = subprocess.Popen([sys.executable, "-c", "import os, time\nwhile True:\n  time.sleep(1)"])  # stays running
        try:
            import threading

            threading.Thread(target=slow.wait, daemon=True).start()  # reap it, as a sandbox's parent does
            assert not sandbox._running(slow.pid, grace=5.0)
            assert sandbox._running(steady.pid, grace=0.2)
        finally:
            steady.kill()
            steady.wait()
    finally:
        slow.kill()
        slow.wait()


def test_a_standby_cut_off_from_the_cp_is_not_hot_standby() -> None:
    """It follows the ring (state established) but is not registered at the CP: it could not ask
    for the active role, so hsbctl says serving without a standby (exit 1), not established."""
    from hsb.ctl.gather import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1}

    def hosts(registered: bool) -> list[dict[str, Any]]:
        return [
            {"reachable": True, "name": "a", "role": "active", "state": "established", "serving": True, "epoch": 1},
            {"reachable": True, "name": "b", "role": "standby", "state": "established", "epoch": 1, "registered_at_cp": registered},
        ]

    assert summarize(cp, hosts(True))["exit_status"] == 0
    cut = summarize(cp, hosts(False))
    assert not cut["established"] and cut["exit_status"] == 1
