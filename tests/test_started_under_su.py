"""A daemon started under util-linux's runuser or su says so at its start (`started_under_su`):
those SIGKILL it 2 s after passing a SIGTERM on, cutting a longer stop short (docs/operations.md
§6). Real wrappers and a real hsbcpd; setpriv, which becomes the program, and a plain parent
are not named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import cp_config, create_takeover_file, free_port, host_config, spawn

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs runuser and su as root (to root): needs root"),
    pytest.mark.skipif(
        not (shutil.which("runuser") and shutil.which("su") and shutil.which("setpriv")), reason="needs util-linux's runuser, su and setpriv"
    ),
]

PROBE = "from hsb.ops.wrapper import killing_wrapper; print(killing_wrapper('hsbd'))"


def _probe(*prefix: str) -> str:
    argv = [*prefix, sys.executable, "-c", PROBE]
    if prefix[:1] == ("su",):  # su runs a command line through a shell
        argv = ["su", "root", "-c", " ".join([sys.executable, "-c", repr(PROBE)])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return out.stdout.strip()


def test_runuser_and_su_are_named_setpriv_and_a_plain_parent_are_not() -> None:
    under_runuser = _probe("runuser", "-u", "root", "--")
    assert under_runuser.startswith("hsbd runs under runuser (pid "), under_runuser
    assert "setpriv --reuid=hsb --regid=hsb --init-groups -- hsbd" in under_runuser and "§6" in under_runuser
    under_su = _probe("su")
    assert under_su.startswith("hsbd runs under su (pid "), under_su
    assert _probe("setpriv", "--reuid=0", "--") == "None"
    assert _probe() == "None"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_hsbcpd_started_under_runuser_warns_at_its_start(tmp_path: Path) -> None:
    cfg = cp_config(tmp_path)
    proc = spawn("hsbcpd", ["runuser", "-u", "root", "--", sys.executable, "-m", "hsb.cp", "--config", str(cfg)], tmp_path / "cp.log")
    try:
        ev = proc.wait_event("started_under_su", timeout=20)
        assert ev["level"] == "warning"
        assert ev["msg"].startswith(f"hsbcpd runs under runuser (pid {proc.popen.pid})"), ev["msg"]
        proc.wait_event("cp_started", timeout=20)
    finally:
        for child in _children(proc.popen.pid):  # (runuser SIGKILLed passes nothing on)
            os.kill(child, signal.SIGKILL)
        proc.stop()


def test_hsbd_started_under_runuser_warns_at_its_start(tmp_path: Path) -> None:
    """(No CP needed: the warning comes first in its start.)"""
    create_takeover_file(tmp_path / "takeover.dat", 64)
    cfg = host_config(
        tmp_path,
        "host-a",
        cp=f"127.0.0.1:{free_port()}",
        peer_listen=f"127.0.0.1:{free_port()}",
        peer=f"127.0.0.1:{free_port()}",
        takeover=tmp_path / "takeover.dat",
        records=64,
    )
    argv = ["runuser", "-u", "root", "--", sys.executable, "-m", "hsb.host", "--role", "active", "--config", str(cfg)]
    proc = spawn("hsbd", argv, tmp_path / "host-a.log")
    try:
        ev = proc.wait_event("started_under_su", timeout=20)
        assert ev["level"] == "warning"
        assert ev["msg"].startswith(f"hsbd runs under runuser (pid {proc.popen.pid})"), ev["msg"]
    finally:
        for child in _children(proc.popen.pid):
            os.kill(child, signal.SIGKILL)
        proc.stop()
