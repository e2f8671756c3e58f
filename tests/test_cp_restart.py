"""hsbcpd SIGKILLed under load and started again on its journal (SPEC §5.7): real hsbcpd and
hsbd processes from the sandbox, 1,000 resuming terminals, the journal service as proof; and
the limit the hosts' max_frame puts on a terminal's message, kept across the restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.wire.framing import payload_max
from tests.support.hostclient import FakeTerminal
from tests.support.procs import log_events, until
from tests.support.sandboxed import active_names, all_back, assert_clean, check_journals, load_with, status, wait_status

pytestmark = pytest.mark.timeout(180)


def cp_pid(info: dict[str, Any]) -> int:
    return int(sandbox.load_state(Path(info["dir"]))["cp"]["pid"])


async def test_sigkill_of_hsbcpd_under_load_1000_resuming_terminals(sb: Any) -> None:
    info = await sb(terminals=1000, service="journal")
    d = Path(info["dir"])
    marks: list[tuple[str, float]] = []
    seen: dict[str, Any] = {}

    async def kill_and_restart() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 1000, what="all standby sessions")
        await asyncio.sleep(0.5)  # load keeps running: the CP dies with messages held and replies unconfirmed
        before = await status(info)
        seen["epoch"] = before["cp"]["epoch"]
        marks.append(("SIGKILL hsbcpd", time.time()))
        old = cp_pid(info)
        os.kill(old, signal.SIGKILL)
        await until(lambda: not sandbox._alive(old), 10, interval=0.002, what="hsbcpd gone")
        # started again at once (systemd: Restart=always), but it dies in the middle of its own
        # recovery; the next one recovers the same journal
        pid = sandbox.start_cp(d, {"HSB_CRASH_POINTS": "cp.mid_recovery"})
        await until(lambda: not sandbox._alive(pid), 15, what="hsbcpd to die mid-recovery")
        sandbox.start_cp(d)
        st = await wait_status(
            info,
            lambda s: s["established"] and all_back(s, 1000),
            timeout=30,
            what="served again",
        )
        seen["after"] = st
        await asyncio.sleep(1.0)  # traffic under the restarted CP

    report = await load_with(info, kill_and_restart, terminals=1000, rate=2000, expect_disconnects="cp", marks=marks)
    assert_clean(report, disconnects_allowed=True)
    d_ = report.to_dict()
    assert d_["cp_reconnects"] >= 900, d_["cp_reconnects"]  # the CP was away: (almost) every terminal saw it
    assert report.pause is not None and report.pause["worst_ms"] is not None
    st = seen["after"]
    assert active_names(st) == ["host-a"]  # the same host active, no operator action
    assert st["cp"]["epoch"] > seen["epoch"]
    check_journals(info, report, ["host-a"])
    cp_log = d / "cp.log"
    crashes = [e for e in log_events(cp_log) if e.get("event") == "crash_point"]
    assert [e["point"] for e in crashes] == ["cp.mid_recovery"]
    rec = [e for e in log_events(cp_log) if e.get("event") == "journal_recovered"]
    assert len(rec) == 2 and rec[-1]["held"] + rec[-1]["replies_kept"] > 0, rec  # something was outstanding at the kill
    # the active named its 1,000 open sessions and the restarted CP kept them: no terminal logged on there again
    adopted = [e for e in log_events(cp_log) if e.get("event") == "sessions_adopted"]
    assert adopted[-1]["adopted"] == 1000 and adopted[-1]["asked"] == 0, adopted[-1]


async def _refused(term_addr: str, name: str, size: int) -> list[dict[str, Any]]:
    """A terminal's message of `size` bytes to the CP at `term_addr`: what came back, once the CP
    refused it (an error) or acknowledged it."""
    t = await FakeTerminal.connect(term_addr, name, hello=False)
    try:
        t.send({"t": "hello", "terminal": name})
        await t.wait(lambda m: m["t"] == "welcome")
        t.send({"t": "msg", "id": 1, "data": "x" * size})
        await t.wait(lambda m: m["t"] in ("error", "ack"))
        return list(t.inbox)
    finally:
        await t.close()


async def test_a_message_too_large_for_the_hosts_is_refused_right_after_a_cp_restart(sb: Any) -> None:
    """Hosts of a smaller max_frame than the CP's: the CP refuses a terminal's message their
    frames cannot hold, before its ack. SIGKILLed and started again on its journal while both
    hosts are frozen (they cannot register again), it refuses it the same way: it did not
    forget their frames (the journal's "f" record). Before, it acknowledged the message, and
    answered it with an error after that ack once the hosts were back."""
    small, big = 8192, 64 * 1024
    info = await sb(terminals=2, cp_options={"max_frame": big}, host_options={"max_frame": small})
    d = Path(info["dir"])
    size = payload_max(small) + 100  # within the CP's frames, not the hosts'
    before = await _refused(info["cp"]["terminal"], "T00001", size)
    assert [m.get("code") for m in before if m["t"] in ("error", "ack")] == ["message_too_large"], before
    hosts = [h["pid"] for h in info["hosts"]]
    for pid in hosts:
        os.kill(pid, signal.SIGSTOP)
    try:
        old = cp_pid(info)
        os.kill(old, signal.SIGKILL)
        await until(lambda: not sandbox._alive(old), 10, what="hsbcpd gone")
        sandbox.start_cp(d)
        await until(
            lambda: sum(e.get("event") == "cp_started" for e in log_events(d / "cp.log")) == 2,
            30,
            what="hsbcpd serving again (its terminal port open)",
        )
        after = await _refused(info["cp"]["terminal"], "T00002", size)
        assert [m.get("code") for m in after if m["t"] in ("error", "ack")] == ["message_too_large"], after
        assert not [m for m in after if m["t"] == "ack"], after
        evs = log_events(d / "cp.log")
        since = max(i for i, e in enumerate(evs) if e.get("event") == "journal_recovered")
        assert not [e for e in evs[since:] if e.get("event") == "host_registered"], "a host registered again: not the window"
    finally:
        for pid in hosts:
            os.kill(pid, signal.SIGCONT)
