"""`hsbctl status` when the host the CP hears as its active cannot be asked (the ctl config's
address for it wrong, a firewall between the operator and its admin port, its admin loop busy):
the first line said `hsb: UNKNOWN (host-a cannot be asked); from the others: NOT SERVING` of a pair
in hot standby, serving every terminal, the CP hearing its active. It now says what the others
report, the CP's active with its host link up, and that whether it serves is not known (exit 3
still). A host that stopped normally, whose CP then has no active and names only the standby
that answered, holds no role at the CP: it is counted as down, and the verdict is `NOT SERVING`
(exit 2, docs/operations.md §0, §9). Real processes: a sandbox, hsbctl run as the operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hsb.ports import free_port

pytestmark = pytest.mark.timeout(120)


def status_with(info: dict[str, Any], hosts: list[str]) -> subprocess.CompletedProcess[str]:
    """hsbctl status with a ctl config of its own: the sandbox's CP and secret, these host addresses."""
    d = Path(info["dir"])
    ctl = d / "ctl-other.toml"
    ctl.write_text(f'cp = "{info["cp"]["admin"]}"\nhosts = {json.dumps(hosts)}\nsecret_file = "secret"\n')  # (a TOML array too)
    return subprocess.run([sys.executable, "-m", "hsb.ctl", "--config", str(ctl), "status"], capture_output=True, text=True, timeout=60)


async def test_an_active_the_cp_hears_but_hsbctl_cannot_ask_is_not_said_not_serving(sb: Callable[..., Awaitable[dict[str, Any]]]) -> None:
    info = await sb(terminals=4)
    admin = {h["name"]: h["admin"] for h in info["hosts"]}
    nobody = f"127.0.0.1:{free_port()}"  # (nothing listens there)

    r = status_with(info, [admin["host-a"], admin["host-b"]])
    assert r.returncode == 0 and r.stdout.startswith("hsb: ESTABLISHED"), r.stdout + r.stderr

    r = status_with(info, [nobody, admin["host-b"]])  # the active's address wrong
    first = r.stdout.splitlines()[0]
    assert r.returncode == 3, r.stdout + r.stderr
    assert first.startswith("hsb: UNKNOWN (host-a cannot be asked); from the others: the CP's active is host-a (its host link up, heard "), first
    assert first.endswith("), not asked: whether it serves is not known") and "NOT SERVING" not in first, first

    r = status_with(info, [nobody, f"127.0.0.1:{free_port()}"])  # neither host reached
    first = r.stdout.splitlines()[0]
    assert r.returncode == 3 and "from the others: the CP's active is host-a (its host link up" in first and "NOT SERVING" not in first, first

    # the active stopped normally: the CP has no active, and the others' verdict stands
    stop = subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], "stop", "--no-takeover"], capture_output=True, text=True, timeout=90)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    r = status_with(info, [admin["host-a"], admin["host-b"]])
    first = r.stdout.splitlines()[0]
    assert r.returncode == 2 and first == "hsb: NOT SERVING", r.stdout
    down = r.stdout.splitlines()[1]
    assert down.startswith(f"  host-a at {admin['host-a']}: connection refused") and down.endswith(
        "; it holds no role at the CP, so it serves nothing: counted as down"
    ), r.stdout
