"""SIGTERM on the active while the CP's journal storage hangs (real processes): the stop's handover
cannot be granted (the grant's new epoch is not durable), runs out of time, and the stop ends as a
lost link to the CP instead of the normal termination; once the storage answers again the standby
serves, and the terminals saw a pause, never an outage: nothing lost, no disconnect, no session
closed (SPEC §5.3, §5.7). (Here the normal stop that ran before came out clean as well: the CP
granted the handover it held once its storage answered. tests/test_host_stop_out_of_time.py
has the cases where it ended the service.)"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from tests.support.procs import arm_faults, log_events, until
from tests.support.sandboxed import active_names, assert_clean, check_journals, load_with, pid_of, wait_status

pytestmark = pytest.mark.timeout(150)

TERMINALS = 50


async def test_sigterm_while_the_cp_journal_hangs_fails_over_with_nothing_lost(sb: Any, tmp_path: Path) -> None:
    """The journal's storage held (a hung mount) from before the SIGTERM until host-a has gone:
    host-a logs `stop_handover_failed` with `then: failover` and exits 0 without `stopping`; the
    CP, its storage back, makes host-b the active; every acknowledged message answered once."""
    ctl_file = tmp_path / "crash-cp"
    ctl_file.write_text("")
    info = await sb(terminals=TERMINALS, service="journal", cp_env={"HSB_CRASH_CONTROL": str(ctl_file)})
    a_pid = pid_of(info, "host-a")
    cp_pid = info["cp"]["pid"]

    async def stop_with_the_journal_held() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == TERMINALS, what="standby sessions")
        await asyncio.sleep(0.3)  # load keeps running
        await arm_faults(ctl_file, cp_pid, "storage hold")
        os.kill(a_pid, signal.SIGTERM)
        # the stop's handover: 15 s, and up to 5 s more for an answer to a handover sent
        await until(lambda: not sandbox._alive(a_pid), 40, what="host-a gone")
        await arm_faults(ctl_file, cp_pid, "storage clear")
        await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
        await asyncio.sleep(0.5)  # traffic under host-b alone

    report = await load_with(info, stop_with_the_journal_held, terminals=TERMINALS, rate=200)
    assert_clean(report)  # nothing lost, no disconnect, no session closed
    events = log_events(Path(info["dir"]) / "host-a.log")
    failed = [e for e in events if e.get("event") == "stop_handover_failed"]
    assert [e.get("then") for e in failed] == ["failover"], failed
    assert [e["code"] for e in events if e.get("event") == "host_exit"] == []  # exit 0
    cp_events = log_events(Path(info["dir"]) / "cp.log")
    assert not [e for e in cp_events if e.get("event") in ("active_stopped_normally", "active_sessions_closed")], cp_events[-20:]
    check_journals(info, report, ["host-a", "host-b"])
