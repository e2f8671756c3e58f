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
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import log_events
from tests.support.sandboxed import active_names, assert_clean, load_with, wait_status

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
