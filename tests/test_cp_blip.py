"""hsbcpd stalled for longer than the hosts' heartbeat timeout (SIGSTOP for 2 s: a VM paused,
a stalled machine; the packet-loss walk-through saw the same with the CP's network silent for
5 s). Both hosts drop their links; when the CP runs again it reads their ends and their new
registrations in some order. It said `session closed: active host lost, no standby` to every
terminal, though the active, alive, registered again a moment later and adopted those sessions;
and a standby registering first could be given the role and the healthy active fenced. Real
processes: the sandbox, a resuming load, SIGSTOP and SIGCONT of hsbcpd (hsb.cp.alone)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import log_events
from tests.support.sandboxed import active_names, assert_clean, ctl, load_with, wait_status

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("stall_s", [0.8, 2.0])
async def test_a_stalled_cp_tells_no_terminal_its_session_closed_and_fails_nobody_over(sb: Any, stall_s: float) -> None:
    info = await sb(terminals=100, service="journal")
    cp_pid = int(info["cp"]["pid"])
    cp_log = Path(info["dir"]) / "cp.log"

    async def stall() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 100, what="all standby sessions")
        await asyncio.sleep(1.0)  # (messages in flight)
        os.kill(cp_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(stall_s)  # (the stall itself: what the test is about, not a wait for a condition)
        finally:
            os.kill(cp_pid, signal.SIGCONT)
        st = await wait_status(info, lambda s: s["established"] and active_names(s) == ["host-a"], what="hot standby again, host-a active")
        assert st["cp"]["last_switchover"] is None, st["cp"]["last_switchover"]
        await asyncio.sleep(1.0)  # (the load goes on after the stall)

    report = await load_with(info, stall, terminals=100, rate=200)
    assert_clean(report)  # (0 session closures, 0 disconnects)
    events = [e.get("event") for e in log_events(cp_log)]
    assert "switchover_granted" not in events, events[-40:]
    assert "sessions_kept_for_return" in events or "host_link_replaced" in events, events[-40:]


def _stall_on(log: Path, event: str, pid: int, stall_s: float, seen: threading.Event) -> None:
    """SIGSTOP `pid` for `stall_s` the moment `log` gets a line of `event` (polled every 0.5 ms,
    on a thread: the event loop of the test may be busy with the load)."""
    needle = f'"event": "{event}"'
    with open(log) as f:
        f.seek(0, 2)
        buf = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = f.read()
            if chunk:
                buf = buf[-200:] + chunk
                if needle in buf:
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        time.sleep(stall_s)  # (the stall itself: what the test is about)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    seen.set()
                    return
            else:
                time.sleep(0.0005)


async def test_a_cp_stalled_in_a_planned_switchover_fences_neither_host_and_closes_no_session(sb: Any) -> None:
    """hsbcpd stopped for 2 s the moment the active has released the role for `hsbctl
    switchover`: both hosts drop their links, and the CP reads their ends and new registrations
    after. The old active, registering again as the active, was refused and fenced (exit 75: no
    standby left), and when the stall came before the grant took effect every terminal was told
    its session closed (the alone.py review, session 69). Now the old active is told it handed
    over and comes back as the standby, the grantee (which never read its grant) registers as the
    standby, is told at once, and takes the role: hot standby again, every terminal served."""
    info = await sb(terminals=50, service="journal")
    cp_pid = int(info["cp"]["pid"])
    cp_log = Path(info["dir"]) / "cp.log"
    seen = threading.Event()

    async def switch_in_a_stall() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 50, what="all standby sessions")
        await asyncio.sleep(1.0)  # (messages in flight)
        watcher = asyncio.get_running_loop().run_in_executor(None, _stall_on, cp_log, "active_released", cp_pid, 2.0, seen)
        r = await asyncio.to_thread(ctl, info, "switchover", "--yes", "--timeout", "8")
        await watcher
        assert seen.is_set(), "the release was never logged"
        st = await wait_status(
            info, lambda s: s["established"] and active_names(s) == ["host-b"], timeout=20, what="hot standby again, host-b active"
        )
        assert all(h.get("state") != "fenced" for h in st["hosts"]), (r.stdout, r.stderr, st["hosts"])
        await asyncio.sleep(1.0)  # (the load goes on after)

    report = await load_with(info, switch_in_a_stall, terminals=50, rate=100)
    assert_clean(report)  # (0 session closures, 0 disconnects)
    events = [e.get("event") for e in log_events(cp_log)]
    assert "registration_refused" not in events, events[-40:]
    host_a = [e.get("event") for e in log_events(Path(info["dir"]) / "host-a.log")]
    assert "fenced" not in host_a, host_a[-30:]
