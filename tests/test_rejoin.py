"""A host started with --role active while the other host is the active rejoins as the standby
(hsb.host.rejoin): the unit `hsbd@active` restarted after its host handed over (a restart, a
reboot, an upgrade) brings the pair back to hot standby with nothing to do; `--no-rejoin`
keeps the strict start (exit 76). Real processes from the sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.cli import EXIT_NOT_ACTIVE
from hsb.ctl import sandbox
from tests.support.procs import log_events, until
from tests.test_failover import active_names, assert_clean, load_with, pid_of, status, wait_status
from tests.test_operations import ctl


def _host(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in st["hosts"] if h.get("name") == name)


@pytest.mark.timeout(120)
async def test_the_active_restarted_after_its_handover_rejoins_as_the_standby(sb: Any) -> None:
    """host-a, the active, stops cleanly (SIGTERM: it hands over to host-b); started again with
    --role active, as systemd starts `hsbd@active`, the CP refuses it the role and it carries
    on as the standby, on the same process: hot standby is established again, no terminal is
    disconnected, and status says it runs as the standby though started as the active. With
    --no-rejoin it exits 76 as before."""
    info = await sb(terminals=20)
    d = Path(info["dir"])
    a_pid = pid_of(info, "host-a")
    rejoined: dict[str, Any] = {}

    async def handover_then_restart() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 20, what="standby sessions")
        os.kill(a_pid, signal.SIGTERM)  # a clean stop hands over
        await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
        await until(lambda: not sandbox._alive(a_pid), 15, what="host-a gone")
        pid = sandbox.start_host(d, "host-a", "active")  # (the unit's role, as systemd starts it)
        st = await wait_status(
            info,
            lambda s: s["established"] and (s["cp"].get("standby") or {}).get("name") == "host-a" and _host(s, "host-a").get("established"),
            what="hot standby again with host-a the standby",
        )
        rejoined.update(pid=pid, status=st)

    report = await load_with(info, handover_then_restart, terminals=20, rate=100)
    assert_clean(report)  # nothing lost, no terminal disconnected, no session closed
    st = rejoined["status"]
    a, b = _host(st, "host-a"), _host(st, "host-b")
    assert st["cp"]["active"]["name"] == "host-b" and st["cp"]["standby"]["name"] == "host-a", st["cp"]
    assert a["role"] == "standby" and a["started_as"] == "active" and a["rejoined_as_standby_of"] == "host-b", a
    assert a["pid"] == rejoined["pid"] and sandbox._alive(rejoined["pid"])  # the process that was started: no exit, no restart
    assert b["role"] == "active" and b["established"] and b["counters"]["two_actives_claimed"] == 0, b
    events = log_events(d / "host-a.log")
    ev = [e for e in events if e.get("event") == "rejoining_as_standby"]
    assert len(ev) == 1 and ev[0]["active"] == "host-b", ev
    assert [e for e in events if e.get("event") in ("start_refused", "fenced")] == []
    assert [e["code"] for e in events if e.get("event") == "host_exit"] == []
    # hsbctl status: exit 0, and host-a's line says that its unit's role is not the one it holds
    r = ctl(info, "status")
    assert r.returncode == 0, (r.stdout, r.stderr)
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("host-a"))
    assert "STANDBY" in line and "(unit role active: rejoined as the standby)" in line, r.stdout
    b_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("host-b"))
    assert "unit role" not in b_line, r.stdout

    # the strict start: host-a stopped (a standby's stop is harmless), then started as the active
    # with --no-rejoin while host-b is the active: refused, exit 76, as the unit's
    # RestartPreventExitStatus expects
    os.kill(rejoined["pid"], signal.SIGTERM)
    await until(lambda: not sandbox._alive(rejoined["pid"]), 15, what="host-a stopped")
    cfg = next(h["config"] for h in info["hosts"] if h["name"] == "host-a")
    loop = asyncio.get_running_loop()
    r2 = await loop.run_in_executor(
        None,
        lambda: subprocess.run(
            [sys.executable, "-m", "hsb.host", "--role", "active", "--no-rejoin", "--config", cfg], capture_output=True, text=True, timeout=30
        ),
    )
    assert r2.returncode == EXIT_NOT_ACTIVE, r2.stderr[-2000:]
    last = r2.stderr.strip().splitlines()[-1]
    assert "host-b is already the active host" in last and "--role standby" in last, last
    assert active_names(await status(info)) == ["host-b"]


class _Srv:
    def __init__(self, rejoin: bool) -> None:
        self.rejoin = rejoin
        self.rejoined_from: str | None = None
        self.states = 0

    def on_state_change(self) -> None:
        self.states += 1


class _HA:
    """What `refused_at_start` touches of hsb.host.ha.HA."""

    def __init__(self, rejoin: bool) -> None:
        self.srv = _Srv(rejoin)
        self.role = "active"
        self.state = "starting"
        self.failed: list[tuple[int, str, str]] = []

    def fail(self, code: int, msg: str, event: str) -> None:
        self.failed.append((code, msg, event))


@pytest.mark.timeout(10)
def test_a_refusal_at_the_start_rejoins_once_and_the_strict_start_exits_76() -> None:
    """The active's name comes from the CP's `active` field (else its message's first word, a CP
    of before); a second refusal as the active (it cannot happen: the role never goes back to
    active but by the CP's grant) is no loop: it exits 76; `--no-rejoin` exits 76 at once."""
    from hsb.host.rejoin import refused_at_start

    ha: Any = _HA(rejoin=True)
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3); ...", "active": "host-b"})
    assert ha.role == "standby" and ha.srv.rejoined_from == "host-b" and ha.failed == [] and ha.srv.states == 1
    ha.role = "active"
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)"})
    assert ha.failed == [(EXIT_NOT_ACTIVE, "refused by the CP: host-b is already the active host (epoch 3)", "start_refused")]
    old_cp: Any = _HA(rejoin=True)
    refused_at_start(old_cp, {"t": "error", "code": "active_exists", "msg": "host-c held the active role at epoch 4 when the CP restarted; ..."})
    assert old_cp.role == "standby" and old_cp.srv.rejoined_from == "host-c"
    strict: Any = _HA(rejoin=False)
    refused_at_start(strict, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)", "active": "host-b"})
    assert strict.role == "active" and strict.srv.rejoined_from is None and [f[0] for f in strict.failed] == [EXIT_NOT_ACTIVE]
