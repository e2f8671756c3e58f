"""`hsbcpd --supervise` (hsb.cp.supervise): a CP that dies of a signal is started again at once
by its master process, on its journal; one that exits ends the master with its code; the master
reads how a worker ended before it reaps it, feeds systemd's watchdog (a crash loop's waits too),
keeps terminals that come back between two workers in its accept queue, and a clean stop under
it refuses new connections at once. Real processes: the sandbox's hsbcpd and hsbd under load, or
hsbcpd alone. A worker's start: tests/test_cp_supervise_starts.py; reloads and wakes across
workers: tests/test_cp_supervise_reload.py; a worker ending for good:
tests/test_cp_supervise_final.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hsb import procstat
from hsb.ctl import sandbox
from tests.support.procs import SECRET, addr, log_events, until, wait_for
from tests.support.sandboxed import active_names, all_back, assert_clean, check_journals, ctl, load_with, status, wait_status
from tests.support.supervised import children, gone, worker_of

pytestmark = pytest.mark.timeout(120)


async def test_a_killed_cp_is_started_again_at_once_under_load(sb: Any) -> None:
    """SIGKILL of the worker under 1,000 msg/s from 300 resuming terminals: the master starts
    the next one on the journal, the terminals resume, nothing acknowledged is lost or done twice."""
    info = await sb(terminals=300, service="journal", supervise=True)
    d = Path(info["dir"])
    master = int(sandbox.load_state(d)["cp"]["pid"])
    marks: list[tuple[str, float]] = []
    seen: dict[str, Any] = {}

    async def kill_worker() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 300, what="all standby sessions")
        first = await status(info)
        old = first["cp"]["pid"]
        assert old != master and old in children(master), (old, master)
        assert first["cp"]["supervisor"] == {"master_pid": master, "restarts": 0, "last_death": None}
        await asyncio.sleep(0.5)  # load keeps running: the CP dies with messages held and replies unconfirmed
        marks.append(("SIGKILL the CP worker", time.time()))
        os.kill(old, signal.SIGKILL)
        await until(lambda: gone(old), 10, interval=0.002, what="the worker gone")
        seen["after"] = await wait_status(
            info,
            lambda s: (s["cp"].get("supervisor") or {}).get("restarts") == 1 and s["established"] and all_back(s, 300),
            timeout=30,
            what="served again by the next worker",
        )
        seen["old"] = old
        await asyncio.sleep(1.0)  # traffic under the new worker

    report = await load_with(info, kill_worker, terminals=300, rate=1000, expect_disconnects="cp", marks=marks)
    assert_clean(report, disconnects_allowed=True)
    r = report.to_dict()
    assert r["disconnects"] >= 300, r  # every terminal lost its connection to the dead worker
    st = seen["after"]
    assert active_names(st) == ["host-a"]
    new = st["cp"]["pid"]
    assert new != seen["old"] and new in children(master) and not gone(master)  # the same master, a new worker
    death = st["cp"]["supervisor"]["last_death"]
    assert death["pid"] == seen["old"] and death["signal"] == "SIGKILL", death
    check_journals(info, report, ["host-a"])
    evs = log_events(d / "cp.log")
    died = [e for e in evs if e.get("event") == "cp_worker_died"]
    assert [(e["pid"], e["signal"], e["restarts"]) for e in died] == [(seen["old"], "SIGKILL", 1)]
    rec = [e for e in evs if e.get("event") == "journal_recovered"]
    assert len(rec) == 2 and rec[-1]["from_generation"] == rec[0]["generation"], rec  # the next worker took the journal over
    # the operator's view: hsbctl status names the master and the death; the metric counts it
    out = ctl(info, "status", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"supervised by pid {master}: restarted 1 time, last after SIGKILL of pid {seen['old']}" in out.stdout, out.stdout
    http = sandbox.load_state(d)["cp"]["http"]
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as resp:
        assert re.search(r"^hsb_cp_worker_restarts_total 1\.0$", resp.read().decode(), re.M)


def test_sigterm_to_the_master_stops_the_cp_cleanly(supervised: Any, tmp_path: Path) -> None:
    p = supervised()
    p.wait_event("cp_started", timeout=15)
    worker = worker_of(p.popen.pid)
    p.kill(signal.SIGTERM)
    assert p.popen.wait(15) == 0
    assert gone(worker)
    assert [e["exit"] for e in p.events("cp_stopped")] == [0]  # the worker's own clean stop, not a kill
    assert p.events("cp_worker_died") == []


def test_a_dead_cp_is_reaped_and_the_next_one_serves(supervised: Any) -> None:
    """SIGKILL of the worker: the master forks the next one, logs why the last one died, and
    reaps the dead one (no zombie left behind while the next one runs)."""
    p = supervised()
    p.wait_event("cp_started", timeout=15)
    master = p.popen.pid
    old = worker_of(master)
    os.kill(old, signal.SIGKILL)
    p.wait_event("cp_worker_started", timeout=15, restarts=1)
    died = p.wait_event("cp_worker_died", timeout=15)
    assert (died["pid"], died["signal"], died["restarts"]) == (old, "SIGKILL", 1)
    wait_for(lambda: len(p.events("cp_started")) == 2, 15, what="the next CP listening")
    wait_for(lambda: old not in children(master), 10, what="the dead CP reaped")
    new = worker_of(master)
    assert new != old and not gone(new) and not gone(master)


def test_the_cp_dies_with_its_master(supervised: Any) -> None:
    p = supervised()
    p.wait_event("cp_started", timeout=15)
    worker = worker_of(p.popen.pid)
    p.kill(signal.SIGKILL)
    wait_for(lambda: gone(worker), 10, what="the worker to die with its master")


def test_a_cp_that_exits_ends_the_master_with_its_code(supervised: Any, tmp_path: Path) -> None:
    """The worker cannot read its journal (a segment that is a directory: past the config check,
    which sees a journal directory it may write): it exits 73, a start that cannot succeed (it
    exited 1, which systemd restarted every 100 ms for ever), and the master with it, at once
    and without starting another (a restart would not help; systemd decides)."""
    (tmp_path / "j" / "seg-00000001-00000001.hsbj").mkdir(parents=True)
    p = supervised(journal="j")
    assert p.popen.wait(20) == 73
    assert len(p.events("cp_worker_started")) == 1 and p.events("cp_worker_died") == []
    text = p.log.read_text()
    assert "cannot open the CP journal" in text and "Traceback" not in text


def test_a_master_that_cannot_listen_says_so_and_starts_no_worker(supervised: Any, tmp_path: Path) -> None:
    """The master holds the listeners (takeover at start): a port already taken is its one-line
    error, exit 73 (it lasts: not restarted by the unit), before any worker is forked."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        p = supervised(terminal_listen=f"127.0.0.1:{port}")
        assert p.popen.wait(20) == 73
    finally:
        taken.close()
    assert p.events("cp_worker_started") == []
    text = p.log.read_text()
    assert "cannot listen" in text and "Traceback" not in text


def test_a_superseded_cp_is_not_started_again(supervised: Any, tmp_path: Path) -> None:
    """Another CP takes the journal over (a newer generation): the worker stops with 75 and the
    master ends with 75 too (started again, it would take the journal straight back)."""
    from hsb.cp.journal.generation import Generations

    p = supervised()
    p.wait_event("cp_started", timeout=15)
    worker = worker_of(p.popen.pid)
    Generations(tmp_path / "journal").take()
    assert p.popen.wait(20) == 75
    assert gone(worker) and p.events("cp_superseded") and p.events("cp_worker_died") == []
    assert len(p.events("cp_worker_started")) == 1


def test_a_crash_loop_waits_longer_before_each_worker(supervised: Any) -> None:
    """A worker that dies at every start (a crash point in its recovery) is started again five
    times at once; from the sixth death each next worker waits, 0.5 s then 1 s (the master gave
    up with exit 1 here, and systemd started a new master every 100 ms for ever). A stop during
    a wait ends the master at once, 0, with every worker reaped."""
    from datetime import datetime

    p = supervised(env={"HSB_CRASH_POINTS": "cp.mid_recovery"})
    wait_for(lambda: len(p.events("cp_worker_crash_loop")) >= 2, 60, what="two waits of the crash loop")
    died = p.events("cp_worker_died")
    assert [e["restarts"] for e in died] == [1, 2, 3, 4, 5] and {e["signal"] for e in died} == {"SIGKILL"}
    loop = p.events("cp_worker_crash_loop")
    assert [(e["deaths"], e["delay_s"], e["restarts"]) for e in loop[:2]] == [(6, 0.5, 6), (7, 1.0, 7)], loop
    started = p.events("cp_worker_started")
    at = {e["restarts"]: datetime.fromisoformat(e["timestamp"]) for e in started}
    waited = (at[6] - datetime.fromisoformat(loop[0]["timestamp"])).total_seconds()
    assert waited >= 0.45, waited  # (the log's clock: the wait was kept, not skipped)
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(10) == 0
    assert all(gone(e["pid"]) for e in p.events("cp_worker_started"))  # every worker dead and reaped


def test_how_a_process_ended_is_read_before_it_is_reaped() -> None:
    """The master's early word on a dead worker (/proc/PID/stat's exit code, set before the
    kernel closes the process's descriptors): a signal, an exit status, or nothing while alive."""
    from hsb.cp.supervise import _exit_status

    assert _exit_status(os.getpid()) is None  # alive: not exiting
    for argv, sig, expect in ((["sleep", "30"], signal.SIGKILL, 9), (["sh", "-c", "exit 3"], None, 3 << 8)):
        p = subprocess.Popen(argv)
        try:
            if sig is not None:
                p.send_signal(sig)
            wait_for(lambda p=p: procstat.state(p.pid) == "Z", 10, what="a zombie")
            assert _exit_status(p.pid) == expect
        finally:
            p.kill()
            p.wait()
    assert _exit_status(p.pid) is None  # reaped: gone


def test_the_master_feeds_systemds_watchdog_while_a_crash_loop_waits(tmp_path: Path) -> None:
    """A crash loop's wait (up to 30 s) has no worker to ping systemd's watchdog, whose
    WATCHDOG_PID names the master: with the unit's WatchdogSec=10 systemd killed the master in
    the 16 s wait and started a new one with its crash loop forgotten. The master pings while no
    worker runs. Here: a worker that dies at once, the first wait made 3 s, WatchdogSec=1."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    code = "\n".join(
        (
            "import os, signal, sys, time",
            "os.environ['WATCHDOG_PID'] = str(os.getpid())  # as systemd sets it: the master",
            "from hsb.cp import supervise",
            "supervise.DELAY_FIRST_S = 3.0",
            "def work(info):",
            "    with open(os.environ['STARTS'], 'a') as f:  # (not stdout: the master's log lines share it)",
            "        f.write(f\"{info['restarts']} {time.monotonic()}\\n\")",
            "    if info['restarts'] == 0:",
            "        os.kill(os.getpid(), signal.SIGKILL)  # dies at once: the master waits 3 s",
            "    return 0",
            "sys.exit(supervise.supervise(work, restarts_max=0))",
        )
    )
    starts_file = tmp_path / "starts"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "STARTS": str(starts_file)}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    pings: list[float] = []  # when each WATCHDOG=1 came (CLOCK_MONOTONIC: the same clock as the child's)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                got = sock.recv(4096).decode().split("\n")
                pings += [time.monotonic()] * got.count("WATCHDOG=1")
            except TimeoutError:
                if p.poll() is not None:
                    break
            assert time.monotonic() < deadline, f"the master did not end; pings {pings}"
        out = p.communicate(timeout=10)[0]
    finally:
        sock.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out[-2000:]
    starts = {int(w[0]): float(w[1]) for w in (ln.split() for ln in starts_file.read_text().splitlines())}
    assert set(starts) == {0, 1} and starts[1] - starts[0] >= 2.9, (starts, out[-2000:])
    during = [t for t in pings if starts[0] < t < starts[1]]
    # every half second of the wait (0.5 s: half of WATCHDOG_USEC), not one interval left unpinged
    assert len(during) >= 5, (starts, pings)
    gaps = [b - a for a, b in zip([starts[0], *during], [*during, starts[1]], strict=True)]
    assert max(gaps) < 1.0, gaps


def test_the_supervised_cp_feeds_systemds_watchdog(supervised: Any, tmp_path: Path) -> None:
    """Under `--supervise` systemd's WATCHDOG_PID names the master, which runs no loop; the worker
    pings for it (the unit has NotifyAccess=all). It once pinged nobody, and the shipped unit
    (WatchdogSec=10) killed the CP every ten seconds."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    try:
        supervised(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}, watchdog_pid=True)
        got: list[str] = []
        deadline = time.monotonic() + 15
        while got.count("WATCHDOG=1") < 2:
            assert time.monotonic() < deadline, f"no watchdog pings: {got}"
            try:
                got += sock.recv(4096).decode().split("\n")
            except TimeoutError:
                pass
        assert "READY=1" in got
    finally:
        sock.close()


async def test_terminals_that_come_back_between_two_workers_wait_in_the_masters_accept_queue(supervised: Any, tmp_path: Path) -> None:
    """The master holds the terminal and host listeners (takeover at start): while one worker is
    dead and the next not yet serving, a terminal that comes back is not refused; it waits in the
    accept queue and the next worker welcomes it. The HTTP port too (a /health check, and the
    next worker waited for the dead one's port to be freed before it served anyone)."""
    import tomllib

    from tests.support.hostclient import FakeTerminal
    from tests.support.procs import free_port

    p = supervised(http_listen=f"127.0.0.1:{free_port()}")
    p.wait_event("cp_started", timeout=15)
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    term_addr = c["terminal_listen"]
    http_host, http_port = c["http_listen"].rsplit(":", 1)
    master = p.popen.pid
    worker = worker_of(master)
    os.kill(master, signal.SIGSTOP)  # no next worker until SIGCONT: the gap held open
    try:
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: procstat.state(worker) == "Z", 10, what="the worker dead")
        t = await FakeTerminal.connect(term_addr, "T00001")  # refused, were the port the dead worker's only
        reader, writer = await asyncio.open_connection(http_host, int(http_port))  # refused likewise
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        await asyncio.sleep(0.3)  # an observation window: nobody serves it yet
        assert not [m for m in t.inbox if m["t"] == "welcome"] and not t.closed
    finally:
        os.kill(master, signal.SIGCONT)
    first = await t.wait(lambda m: m["t"] in ("welcome", "error"), timeout=15)
    assert first["t"] == "welcome", first
    await t.close()
    answer = await asyncio.wait_for(reader.read(), 15)  # the next worker answers the check made in the gap
    writer.close()
    assert answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0], answer[:200]


async def test_a_clean_stop_under_its_master_refuses_new_connections_at_once(supervised: Any, tmp_path: Path) -> None:
    """SIGTERM to the master while its worker drains (the journal's storage held: the stop waits
    about 2 s for a group commit): from the moment the worker stops serving, a new connection is
    refused, as without a master. The listening sockets are the master's too; merely closed in the
    worker they went on completing connections that nobody would accept, reset only when the
    master exited (a terminal saw a connect succeed and its hello go unanswered)."""
    import tomllib

    from hsb.wire.client import request
    from tests.support.hostclient import FakeTerminal
    from tests.support.procs import arm_faults

    ctl_file = tmp_path / "crash-cp"
    ctl_file.write_text("")
    p = supervised(env={"HSB_CRASH_CONTROL": str(ctl_file)}, journal_timeout=30)
    p.wait_event("cp_started", timeout=15)
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    term_host, term_port = c["terminal_listen"].rsplit(":", 1)
    master = p.popen.pid
    worker = worker_of(master)
    t = await FakeTerminal.connect(c["terminal_listen"], "T00001")
    await t.wait(lambda m: m["t"] == "welcome")
    await arm_faults(ctl_file, worker, "storage hold")
    t.send({"t": "msg", "id": 1, "data": "x"})
    h, port = addr(c["admin_listen"])

    deadline = time.monotonic() + 10
    while not (await request(h, port, SECRET, {"t": "status"}))["data"]["journal"]["pending_records"]:
        assert time.monotonic() < deadline, "no group commit held"
        await asyncio.sleep(0.05)
    os.kill(master, signal.SIGTERM)
    await until(lambda: bool(p.events("cp_stopping")), 10, what="the worker stopping")
    assert not [e for e in p.events() if e.get("event") == "cp_stopped"], "the stop ended before the window was observed"
    # the worker is still draining (its journal's storage held): a connect is refused (once its
    # listeners are shut down, just after that log line: a connect in between may still complete)
    deadline = time.monotonic() + 10
    while True:
        try:
            _, w = await asyncio.open_connection(term_host, int(term_port))
        except ConnectionRefusedError:
            break
        w.close()
        assert time.monotonic() < deadline, "connections still accepted during the stop's drain"
        await asyncio.sleep(0.02)
    assert p.popen.poll() is None and not gone(worker)  # still inside the stop while it was refused
    assert await asyncio.to_thread(p.popen.wait, 15) == 0
    await t.close()
