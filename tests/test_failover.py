"""Failover end to end (issue 5): real hsbcpd and hsbd processes from the sandbox,
real terminals from hsb.term, SIGKILL/SIGSTOP of the active, journals as proof."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from tests.support.hostjournal import unmarked_repeats
from tests.support.procs import log_events, until, wait_for
from tests.support.sandboxed import acked_ids, active_names, assert_clean, check_journals, journals, load_with, pid_of, status, wait_status


async def test_sigkill_active_under_load_1000_terminals_journal(sb: Any) -> None:
    info = await sb(terminals=1000, service="journal")
    a_pid = pid_of(info, "host-a")

    async def kill() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 1000, what="all standby sessions")
        await asyncio.sleep(0.5)  # load keeps running: kill with messages in flight
        os.kill(a_pid, signal.SIGKILL)
        # the CP's and the hosts' answers in one status are taken at slightly different moments:
        # wait for the CP's record of the grant too, not only for host-b's role
        st = await wait_status(info, lambda s: active_names(s) == ["host-b"] and s["cp"]["last_switchover"] is not None, what="host-b active")
        assert st["cp"]["last_switchover"]["switched"] == 1000

    report = await load_with(info, kill, terminals=1000, rate=2000)
    assert_clean(report)
    assert report.to_dict()["switched"] == 1000
    check_journals(info, report, ["host-a", "host-b"])


async def test_sigstop_active_takes_over_after_timeout_and_old_one_is_fenced(sb: Any) -> None:
    info = await sb(terminals=200, service="journal")
    a_pid = pid_of(info, "host-a")

    marks: list[tuple[str, float]] = []

    async def stop() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 200, what="all standby sessions")
        await asyncio.sleep(0.5)  # load keeps running: stop with messages in flight
        marks.append(("SIGSTOP", time.time()))
        os.kill(a_pid, signal.SIGSTOP)
        await wait_status(info, lambda s: "host-b" in active_names(s), timeout=10, what="host-b active")

    try:
        report = await load_with(info, stop, terminals=200, rate=500, marks=marks)
        assert_clean(report)
        worst = report.pause["worst_ms"]
        assert worst >= 400, f"a SIGSTOP is detected by timeout (500 ms), so the worst pause cannot be {worst} ms"
    finally:
        os.kill(a_pid, signal.SIGCONT)

    # woken up, the old active finds itself fenced and exits with the fenced status
    def exited() -> bool:
        return not sandbox._alive(a_pid)

    wait_for(exited, 15, what="old active to exit")
    log = (Path(info["dir"]) / "host-a.log").read_text()
    assert '"event": "fenced"' in log
    exits = [e for e in log_events(Path(info["dir"]) / "host-a.log") if e.get("event") == "host_exit"]
    assert len(exits) == 1 and exits[0]["code"] == 75 and "fenced" in exits[0]["msg"], exits
    after = log[log.index('"event": "host_exit"') :].splitlines()[1:]
    assert not any('"event": "peer_link_up"' in line or '"event": "link_authenticated"' in line for line in after), after
    check_journals(info, report, ["host-a", "host-b"])


@contextlib.asynccontextmanager
async def _hot_pair_behind_peer_proxies(tmp_path: Path) -> AsyncIterator[tuple[Any, Callable[[bool], None], Any]]:
    """A pair in hot standby whose peer link runs through two proxies (host-a -> one -> host-b's
    peer port; host-b -> the other -> host-a's), and T00001 logged on with its session open:
    (pair, cut(on) for both proxies, T00001). Stopped, proxies closed, at the end."""
    from hsb.ports import free_port
    from tests.support.hostclient import FakeTerminal
    from tests.support.pair import make_pair
    from tests.support.proxy import Proxy

    pa, pb = free_port(), free_port()
    proxy_to_b, proxy_to_a = Proxy(f"127.0.0.1:{pb}"), Proxy(f"127.0.0.1:{pa}")
    pair = make_pair(
        tmp_path,
        host_a={"peer_listen": f"127.0.0.1:{pa}", "peer": await proxy_to_b.start()},
        host_b={"peer_listen": f"127.0.0.1:{pb}", "peer": await proxy_to_a.start()},
    )

    def cut(on: bool) -> None:
        proxy_to_b.set_cut(on)
        proxy_to_a.set_cut(on)

    try:
        pair.start("host-a", "active")
        pair.start("host-b", "standby")
        await pair.wait_state("host-b", "established")
        t = await FakeTerminal.connect(pair.cp.info["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        yield pair, cut, t
    finally:
        await proxy_to_a.close()
        await proxy_to_b.close()
        pair.stop()


async def test_only_the_peer_link_fails(tmp_path: Path) -> None:
    async with _hot_pair_behind_peer_proxies(tmp_path) as (pair, cut, t):
        cut(True)
        b = await pair.wait_state("host-b", "established")  # still standby, following the ring
        deadline = asyncio.get_running_loop().time() + 10
        while (await pair.status("host-b"))["peer_link"]["up"]:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        while True:  # host-a sees the cut too, and host-b's claim was refused by the CP
            a, b = await pair.status("host-a"), await pair.status("host-b")
            if not a["peer_link"]["up"] and "refused" in (b["last_error"] or ""):
                break
            assert asyncio.get_running_loop().time() < deadline, (a["peer_link"], b["last_error"])
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # two heartbeat timeouts more: still no switchover
        a, b = await pair.status("host-a"), await pair.status("host-b")
        assert a["role"] == "active" and b["role"] == "standby"
        assert not a["peer_link"]["up"] and not b["peer_link"]["up"]
        assert (await pair.cp_status())["switchovers"] == 0
        # hsbctl status says what this is: the standby still takes over a crash (not "without a standby")
        secret = next(pair.dir.rglob("secret"))
        argv = ["--cp", pair.cp.info["admin"], "--host", pair.hosts["host-a"].info["admin"], "--host", pair.hosts["host-b"].info["admin"]]
        r = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hsb.ctl", *argv, "--secret-file", str(secret), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stdout.splitlines()[:2] == [
            "hsb: SERVING, PEER LINK DOWN (a crash is still taken over; no switchover)",
            "  the peer link between host-a and host-b is down: host-b (registered at the CP, following the ring) still takes over if host-a dies,"
            " told by the CP once host-a's lease has surely run out (at most 0.45 s with the defaults); until the link is back a switchover is"
            " refused (a stop of host-a still hands over, through the CP: §9); check the network between the hosts' peer_listen addresses"
            " (a firewall, a route) and both hosts' logs (hot_standby_lost, peer_link_*)",
        ], r.stdout
        t.send({"t": "msg", "id": 1, "data": "during the cut"})
        assert (await t.wait(lambda m: m["t"] == "reply"))["data"] == "during the cut"
        cut(False)
        await pair.wait_state("host-a", "established")
        await pair.wait_state("host-b", "established")  # (it stayed established through the cut, following the ring)
        deadline = asyncio.get_running_loop().time() + 10
        while not (await pair.status("host-b"))["peer_link"]["up"]:  # the link itself comes back, in its own time
            assert asyncio.get_running_loop().time() < deadline, "the peer link did not come back after the cut healed"
            await asyncio.sleep(0.05)
        # a logon during the cut still reached the standby through the file
        assert (await pair.cp_sessions())["T00001"]["standby"]


async def test_a_stop_during_a_peer_link_cut_hands_over_through_the_cp(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop, a reboot) of the active while only the peer link is cut: the
    standby, registered at the CP and following the ring, takes the service over; the terminal
    keeps its session and its later message is answered by the new active. Before, the stop was
    the normal termination and nobody served until hsbctl promote, though a crash would have
    failed over."""
    async with _hot_pair_behind_peer_proxies(tmp_path) as (pair, cut, t):
        t.send({"t": "msg", "id": 1, "data": "before the cut"})
        assert (await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1))["data"] == "before the cut"
        await pair.wait_state("host-b", "established")  # (its standby session for T00001 opened from the ring)
        cut(True)
        await pair.wait_state("host-a", "serving", role="active")
        pair.hosts["host-a"].kill(signal.SIGTERM)
        assert await asyncio.to_thread(pair.hosts["host-a"].popen.wait, 30) == 0
        assert pair.hosts["host-a"].events("stop_hands_over_peer_link_down"), pair.hosts["host-a"].log.read_text()[-3000:]
        assert pair.hosts["host-a"].events("stopped_after_handover"), pair.hosts["host-a"].log.read_text()[-3000:]
        await pair.wait_state("host-b", "serving", role="active")
        t.send({"t": "msg", "id": 2, "data": "after the stop"})
        reply = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 2)
        assert reply["data"] == "after the stop" and not t.closed
        # the terminal saw no session closed: the service was handed over, not ended
        assert not [m for m in t.inbox if m["t"] == "session" and m.get("state") != "open"], t.inbox
        assert (await pair.cp_status())["active"]["name"] == "host-b"


async def test_twenty_failovers_back_and_forth_under_load(sb: Any) -> None:
    info = await sb(terminals=200, service="journal")
    d = Path(info["dir"])
    order = ["host-a"]
    snapshots: list[dict[str, Any]] = []
    rounds = 20

    async def churn() -> None:
        active = "host-a"
        for i in range(rounds):
            # kill at a quiet moment for the sessions: every logon has reached the standby
            await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 200, what=f"round {i}: standby sessions")
            standby = "host-b" if active == "host-a" else "host-a"
            os.kill(pid_of(info, active), signal.SIGKILL)
            await wait_status(info, lambda s, sb_=standby: active_names(s) == [sb_], what=f"round {i}: {standby} active")
            sandbox.start_host(d, active, "standby")
            st = await wait_status(info, lambda s: s["established"], what=f"round {i}: established again")
            assert len(active_names(st)) == 1
            order.append(standby)
            snapshots.append(st)
            active = standby

    report = await load_with(info, churn, terminals=200, rate=400)
    assert_clean(report)
    assert len(snapshots) == rounds
    epochs = [s["cp"]["epoch"] for s in snapshots]
    assert epochs == sorted(epochs) and len(set(epochs)) == rounds
    # journals are per host (each host was active several times, so no order between the two):
    # the delivery guarantee on the union, and an id processed again marked redelivered each time
    j = journals(info)
    assert acked_ids(report) <= set(j["host-a"]) | set(j["host-b"])
    bad = unmarked_repeats(j)
    assert not bad, f"ids processed again without the redelivered mark: {bad[:5]}"


async def test_conventional_mode_disconnects_but_loses_nothing(sb: Any) -> None:
    info = await sb(terminals=200, service="journal", conventional=True)
    a_pid = pid_of(info, "host-a")

    async def kill() -> None:
        await asyncio.sleep(0.5)  # load keeps running: kill with messages in flight
        os.kill(a_pid, signal.SIGKILL)
        await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")

    report = await load_with(info, kill, terminals=200, rate=500, expect_disconnects=True)
    assert_clean(report, disconnects_allowed=True)
    d = report.to_dict()
    assert d["disconnects"] == 200 and d["switched"] == 0
    st = await status(info)
    assert st["cp"]["last_switchover"]["classic"] == 200 and st["cp"]["last_switchover"]["switched"] == 0
    check_journals(info, report, ["host-a", "host-b"])


async def test_active_restarted_as_active_while_other_is_active_is_refused(sb: Any) -> None:
    """After a failover, the old active started again with --role active and --no-rejoin (the
    strict start) is refused and exits 76; without the flag it rejoins as the standby
    (tests/test_rejoin.py)."""
    info = await sb(terminals=10)
    os.kill(pid_of(info, "host-a"), signal.SIGKILL)
    await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
    cfg = next(h["config"] for h in info["hosts"] if h["name"] == "host-a")
    argv = [sys.executable, "-m", "hsb.host", "--role", "active", "--no-rejoin", "--config", cfg]
    r = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(argv, capture_output=True, text=True, timeout=30))
    assert r.returncode == 76, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "host-b is already the active host" in last and "--role standby" in last


async def test_cp_alone_fences_an_old_active_that_does_not_fence_itself(sb: Any) -> None:
    """The CP's fencing, end to end: host-a is started with self-fencing disabled (a test-only
    switch: it ignores the fenced frame, refusals and the loss of its CP link and keeps serving at
    its old epoch). Stopped, failed over, then woken up, it still cannot get one frame accepted:
    the CP closed its link at the grant and refuses it as active on every new one."""
    info = await sb(terminals=50, service="journal", host_env={"host-a": {"HSB_TEST_DISABLE_SELF_FENCING": "1"}})
    a_pid = pid_of(info, "host-a")
    d = Path(info["dir"])
    journal_a = next(Path(p) for p in info["journals"] if Path(p).stem == "journal-host-a")
    seen: dict[str, Any] = {}

    def refusals() -> int:
        return sum(1 for e in log_events(d / "cp.log") if e.get("event") == "registration_refused" and e.get("host") == "host-a")

    async def stop_grant_wake() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 50, what="all standby sessions")
        await asyncio.sleep(0.5)  # load keeps running: host-a is given messages it will not answer in time
        os.kill(a_pid, signal.SIGSTOP)
        try:
            st = await wait_status(
                info, lambda s: s["cp"]["epoch"] >= 2 and s["cp"]["last_switchover"] is not None, timeout=10, what="grant to host-b"
            )
            seen["replies_at_grant"] = st["cp"]["replies_by_host"].get("host-a", 0)
            seen["journal_at_grant"] = journal_a.stat().st_size
        finally:
            os.kill(a_pid, signal.SIGCONT)
        # awake, host-a processes what it had been given and tries to answer it at epoch 1...
        await until(lambda: journal_a.stat().st_size > seen["journal_at_grant"], 10, what="host-a to process after waking")
        # ...then, its link closed by the CP, tries to register as the active again
        try:
            await until(lambda: refusals() >= 2, 10, what="two refused registrations of host-a")
        except TimeoutError:
            pass  # judged below, after what matters most

    try:
        report = await load_with(info, stop_grant_wake, terminals=50, rate=300)
        st = await status(info)
    finally:
        os.kill(a_pid, signal.SIGCONT)
    assert_clean(report)
    a = next(h for h in st["hosts"] if h["name"] == "host-a")
    assert sandbox._alive(a_pid) and a.get("role") == "active", a  # it really did not fence itself
    assert any(e.get("event") == "fence_ignored" for e in log_events(d / "host-a.log"))
    assert active_names(st) == ["host-a", "host-b"] or active_names(st) == ["host-b", "host-a"]
    # ...and yet the CP accepted no reply from it after the grant, and host-b serves
    assert st["cp"]["replies_by_host"].get("host-a", 0) == seen["replies_at_grant"], st["cp"]["replies_by_host"]
    assert st["cp"]["active"]["name"] == "host-b"
    assert refusals() >= 2  # every new link it opened as "active" was refused
    check_journals(info, report, ["host-a", "host-b"])


async def test_a_flip_one_terminal_per_turn_of_the_loop_loses_nothing(sb: Any) -> None:
    """`flip_slice = 1`: at each grant the CP flips one terminal per turn of its event loop,
    so messages, acknowledgements and the new active's replies interleave with the flip at
    every step. A SIGKILL failover and a planned switchover under load: the strict verdict
    (nothing lost, duplicated or unacknowledged, no terminal disconnected)."""
    info = await sb(terminals=300, service="journal", cp_options={"flip_slice": 1})
    d = Path(info["dir"])

    async def both() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 300, what="all standby sessions")
        await asyncio.sleep(0.3)  # messages in flight at the kill
        os.kill(pid_of(info, "host-a"), signal.SIGKILL)
        st = await wait_status(info, lambda s: active_names(s) == ["host-b"] and s["cp"]["last_switchover"] is not None, what="host-b active")
        first = st["cp"]["last_switchover"]
        assert first["switched"] == 300 and first["slices"] > 1, first
        # the switch's record ends: every terminal it kept waiting was served (not the 60 s deadline)
        st = await wait_status(info, lambda s: s["cp"]["last_switchover"].get("all_served_ms") is not None, timeout=10, what="failover served")
        assert st["cp"]["last_switchover"]["all_served_ms"] < 5000, st["cp"]["last_switchover"]
        sandbox.start_host(d, "host-a", "standby")
        await wait_status(info, lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] == 300, what="established again")
        await asyncio.sleep(0.3)  # pacing: the load runs in hot standby for a while, messages in flight at the switchover
        r = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "hsb.ctl", *info["ctl"], "switchover", "--yes"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        st = await wait_status(
            info, lambda s: active_names(s) == ["host-a"] and s["cp"]["last_switchover"]["epoch"] > first["epoch"], what="host-a active"
        )
        second = st["cp"]["last_switchover"]
        assert second["switched"] == 300 and second["planned"] and second["slices"] > 1, second
        st = await wait_status(info, lambda s: s["cp"]["last_switchover"].get("all_served_ms") is not None, timeout=10, what="switchover served")

    report = await load_with(info, both, terminals=300, rate=600)
    assert_clean(report)
    assert report.to_dict()["switched"] >= 600
    check_journals(info, report, ["host-a", "host-b"])
