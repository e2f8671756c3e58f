"""`hsbcpd --supervise` (hsb.cp.supervise): a CP that dies of a signal is started again at once
by its master process, on its journal; one that exits ends the master with its code. Real
processes: the sandbox's hsbcpd and hsbd under load, or hsbcpd alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsb import procstat
from hsb.ctl import sandbox
from tests.support.procs import SECRET, Proc, addr, cp_config, log_events, python_lines, spawn, until, wait_for
from tests.support.sandboxed import active_names, all_back, assert_clean, check_journals, ctl, load_with, status, wait_status

pytestmark = pytest.mark.timeout(120)


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux: /proc/PID/task/PID/children)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def worker_of(master: int, not_: int = 0, timeout: float = 10.0) -> int:
    """The master's worker (one other than `not_`), once there is one."""

    def find() -> int | None:
        kids = [p for p in children(master) if p != not_]
        return kids[0] if kids else None

    pid: int = wait_for(find, timeout, what=f"a worker of {master}")
    return pid


def gone(pid: int) -> bool:
    return not sandbox._alive(pid)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    """Start `hsbcpd --supervise` on a config of its own; every process is killed at the end."""
    procs: list[tuple[Proc, list[int]]] = []  # the masters

    def start(env: dict[str, str] | None = None, watchdog_pid: bool = False, code: str | None = None, **cp: Any) -> Proc:
        cfg = cp_config(tmp_path, terminals=5, **{"journal": "journal", **cp})
        # code: Python run instead of `-m hsb.cp`, which then calls hsbcpd's main itself
        argv = [sys.executable, *(("-c", code) if code else ("-m", "hsb.cp")), "--config", str(cfg), "--supervise"]
        if watchdog_pid:  # as systemd sets it: the unit's main process, the master
            argv = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv]
        p = spawn("hsbcpd", argv, tmp_path / "cp.log", env)
        procs.append((p, []))
        return p

    yield start
    for p, _ in procs:
        p.stop()  # SIGKILL to the master: its worker goes with it (PR_SET_PDEATHSIG) ...
    cfg = str(tmp_path / "cp.toml")
    for d in Path("/proc").iterdir():  # ... and is killed here anyway if it did not
        try:
            if d.name.isdigit() and cfg in (d / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


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
    assert f"supervised by pid {master}: restarted 1 times, last after SIGKILL of pid {seen['old']}" in out.stdout, out.stdout
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


# hsbcpd whose journal recovery fails (EIO) while the file named by FAIL_RECOVERY exists
FAILING_RECOVERY = """
import errno, os, sys
from hsb.cp import taking_over
real = taking_over.recover
def failing(*a, **kw):
    if os.path.exists(os.environ["FAIL_RECOVERY"]):
        raise OSError(errno.EIO, "Input/output error")
    return real(*a, **kw)
taking_over.recover = failing
from hsb.cp.main import main
main(sys.argv[1:])
"""


def test_a_worker_that_fails_at_start_is_started_again_after_a_growing_wait(supervised: Any, tmp_path: Path) -> None:
    """A start that fails for a reason that may pass (the journal's storage answers EIO): the
    worker exits 1 and the master starts another, after 0.1 s, 0.2 s, 0.4 s ... (up to 5 s),
    rather than ending with 1, which systemd answered with a new master, a new interpreter,
    every 100 ms for ever. Once the storage answers, the next worker serves."""
    from datetime import datetime

    from hsb.cp import supervise as sv

    assert [sv.failed_delay(n) for n in (1, 2, 3, 4, 6, 7, 20)] == [0.1, 0.2, 0.4, 0.8, 3.2, 5.0, 5.0]
    flag = tmp_path / "storage-fails"
    flag.touch()
    p = supervised(env={"FAIL_RECOVERY": str(flag)}, code=FAILING_RECOVERY)
    wait_for(lambda: len(p.events("cp_worker_failed")) >= 4, 30, what="four failed starts")
    failed = p.events("cp_worker_failed")[:4]
    assert [(e["exit"], e["failures"], e["delay_s"]) for e in failed] == [(1, 1, 0.1), (1, 2, 0.2), (1, 3, 0.4), (1, 4, 0.8)], failed
    started = p.events("cp_worker_started")
    assert all(e["restarts"] == 0 for e in started) and p.events("cp_worker_died") == []  # no crash: a start again
    waited = (datetime.fromisoformat(started[3]["timestamp"]) - datetime.fromisoformat(failed[2]["timestamp"])).total_seconds()
    assert waited >= 0.35, waited  # (the log's clock: the wait was kept)
    assert p.popen.poll() is None and "cannot open the CP journal" in p.log.read_text()
    flag.unlink()
    p.wait_event("cp_started", timeout=20)
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(10) == 0


# hsbcpd whose journal recovery, once begun (it makes HOLD_RECOVERY.in), waits while the file named
# by HOLD_RECOVERY exists, then fails (EIO) while the file named by FAIL_RECOVERY exists
HELD_THEN_FAILING_RECOVERY = """
import errno, os, sys, time
from hsb.cp import taking_over
real = taking_over.recover
def held_then_failing(*a, **kw):
    open(os.environ["HOLD_RECOVERY"] + ".in", "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(os.environ["HOLD_RECOVERY"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    if os.path.exists(os.environ["FAIL_RECOVERY"]):
        raise OSError(errno.EIO, "Input/output error")
    return real(*a, **kw)
taking_over.recover = held_then_failing
from hsb.cp.main import main
main(sys.argv[1:])
"""


async def test_a_worker_started_again_after_a_failed_start_keeps_a_reload_sent_before(supervised: Any, tmp_path: Path) -> None:
    """A terminal added and SIGHUP sent while the worker recovers the journal; the recovery then
    fails (EIO: exit 1) and the master starts the next worker. That one ran on the master's start
    config (only a worker forked after a death read the file again): the reload, noted by the
    worker that exited only, was lost and the added terminal refused until the next SIGHUP. Any
    worker forked again reads the config file again: once the storage answers, it logs on."""
    import tomllib

    from tests.support.hostclient import FakeTerminal

    hold, fail = tmp_path / "hold-recovery", tmp_path / "storage-fails"
    hold.touch()
    fail.touch()
    p = supervised(env={"HOLD_RECOVERY": str(hold), "FAIL_RECOVERY": str(fail)}, code=HELD_THEN_FAILING_RECOVERY)
    wait_for(lambda: (tmp_path / "hold-recovery.in").exists(), 20, what="the first worker recovering")
    cfg_path = tmp_path / "cp.toml"
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace("count = 5", "count = 6"))
    first = worker_of(p.popen.pid)
    os.kill(p.popen.pid, signal.SIGHUP)  # the master passes it on to the worker recovering
    hold.unlink()  # its recovery fails now: exit 1
    failed = p.wait_event("cp_worker_failed", timeout=20)
    assert failed["pid"] == first and failed["exit"] == 1, failed
    fail.unlink()  # the storage answers: the next worker serves
    await until(lambda: bool(p.events("cp_started")), 20, what="a worker serving")
    assert [e["restarts"] for e in p.events("cp_worker_started")][:2] == [0, 0]  # (no death: a start again)
    term_addr = tomllib.loads(text)["cp"]["terminal_listen"]
    for name in ("T00001", "T00006"):
        t = await FakeTerminal.connect(term_addr, name)
        got = await t.wait(lambda m: m["t"] in ("welcome", "error"))
        await t.close()
        assert got["t"] == "welcome", (name, got)


# hsbcpd whose journal recovery waits while the file named by HOLD_RECOVERY exists (a slow recovery)
SLOW_RECOVERY = """
import os, sys, time
from hsb.cp import taking_over
real = taking_over.recover
def held(*a, **kw):
    deadline = time.monotonic() + 60
    while os.path.exists(os.environ["HOLD_RECOVERY"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(*a, **kw)
taking_over.recover = held
from hsb.cp.main import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("admin_host", ["127.0.0.1", "localhost"])
async def test_a_worker_forked_again_answers_status_and_health_while_it_recovers(supervised: Any, tmp_path: Path, admin_host: str) -> None:
    """A worker forked again after a crash took the journal over before it started its admin
    link and /health: the master held those listeners, so `hsbctl status` and keepalived's
    track script waited unanswered through the whole recovery (any other start answers them
    meanwhile: `take_over`). Here the recovery is held; both answer, the CP taking over. Also
    with the admin and http addresses given as a host name, which each worker binds itself."""
    import tomllib

    from hsb.wire.client import LinkClosed, request
    from tests.support.procs import SECRET, addr, free_port, http_get

    hold = tmp_path / "hold-recovery"
    listen = {"admin_listen": f"{admin_host}:{free_port()}", "http_listen": f"{admin_host}:{free_port()}"}
    p = supervised(env={"HOLD_RECOVERY": str(hold)}, code=SLOW_RECOVERY, **listen)
    p.wait_event("cp_started", timeout=15)
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    master = p.popen.pid
    first = worker_of(master)
    hold.write_text("")
    os.kill(first, signal.SIGKILL)
    p.wait_event("cp_worker_started", timeout=15, restarts=1)
    h, port = addr(c["admin_listen"])

    async def status() -> dict[str, Any] | None:
        try:
            ans = await request(h, port, SECRET, {"t": "status"}, timeout=1.0)
        except (OSError, TimeoutError, LinkClosed):
            return None
        return ans.get("data")

    deadline = time.monotonic() + 20
    while (st := await status()) is None:
        assert time.monotonic() < deadline, "no status answered while the worker forked again recovers"
    assert st["cp_state"] == "taking_over" and st["supervisor"]["restarts"] == 1, st
    code, body = await asyncio.to_thread(http_get, c["http_listen"], "/health")
    assert code == 200 and json.loads(body)["cp_state"] == "taking_over", (code, body)
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hsb.ctl", "--cp", c["admin_listen"], "--secret-file", str(tmp_path / "secret"), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = json.loads(r.stdout)["cp"]["error"]
    assert err == f"no CP serves: cp at {c['admin_listen']} taking_over", err
    assert len(p.events("journal_recovered")) == 1  # all this while the recovery was held
    hold.unlink()
    await until(lambda: len(p.events("cp_started")) == 2, 20, what="the worker forked again serving")
    st = await status()
    assert st is not None and st["cp_state"] == "serving", st


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


# --------------------------------------------------------------------------- the parts, in-process


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


async def test_a_cp_forked_again_waits_for_its_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead CP's sockets may still be closing when the next one binds: EADDRINUSE is waited
    out (BIND_WAIT_S at most), but only by a CP its master started again."""
    import errno

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    cfg = load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig)
    s = srv.CPServer(cfg, b"s" * 32, str(tmp_path / "cp.toml"))
    tries: list[int] = []

    async def busy_twice() -> str:
        tries.append(1)
        if len(tries) <= 2:
            raise OSError(errno.EADDRINUSE, "address already in use")
        return "bound"

    s.supervisor = {"master_pid": 1, "restarts": 1, "last_death": None}
    assert await s._bind(busy_twice) == "bound" and len(tries) == 3
    tries.clear()
    s.supervisor = {"master_pid": 1, "restarts": 0, "last_death": None}  # the first start: another hsbcpd
    with pytest.raises(OSError):
        await s._bind(busy_twice)
    assert len(tries) == 1
    monkeypatch.setattr(srv, "BIND_WAIT_S", 0.05)
    s.supervisor = {"master_pid": 1, "restarts": 2, "last_death": None}

    async def always_busy() -> str:
        raise OSError(errno.EADDRINUSE, "address already in use")

    t0 = time.monotonic()
    with pytest.raises(OSError):
        await s._bind(always_busy)
    assert time.monotonic() - t0 < 2.0


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


def test_a_reload_or_wake_sent_while_the_worker_starts_is_acted_on_not_lost(tmp_path: Path) -> None:
    """Between its fork and its event loop's own handlers (a recovery can take a second) the worker
    ignored SIGHUP and SIGUSR1, so `systemctl reload` or keepalived's wake sent then was lost; they
    are noted and acted on once the loop is up."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import supervise
    from hsb.cp.config import CPConfig

    early = supervise.EARLY_SIGNALS
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        supervise.record_early_signals()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while len(early) < 2:  # (Python runs the handlers between bytecodes)
            assert time.monotonic() < deadline, early
            time.sleep(0.001)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert early == [signal.SIGHUP, signal.SIGUSR1]
    s = srv.CPServer(load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig), b"s" * 32, str(tmp_path / "cp.toml"))
    s.take_early_signals()
    assert s.reload_requested and s.wake_requested and early == []


async def test_a_worker_forked_again_runs_on_the_config_as_reloaded(supervised: Any, tmp_path: Path) -> None:
    """Terminals added by SIGHUP are still there after the worker dies and the master forks the
    next one (it reads the config file as it is now, as a restart by systemd would), and a file
    broken since then leaves the next worker on the config the workers before it applied (the
    SIGHUPs included, not the master's start), said in the log."""
    import tomllib

    from tests.support.hostclient import FakeTerminal

    p = supervised()
    p.wait_event("cp_started", timeout=15)
    cfg_path = tmp_path / "cp.toml"
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace("count = 5", "count = 7"))
    os.kill(p.popen.pid, signal.SIGHUP)  # the master passes it on
    p.wait_event("config_reloaded", timeout=15)
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    wait_for(lambda: len(p.events("cp_started")) == 2, 15, what="the next worker listening")
    term_addr = tomllib.loads(text)["cp"]["terminal_listen"]
    t = await FakeTerminal.connect(term_addr, "T00007")
    first = await t.wait(lambda m: m["t"] in ("welcome", "error"))
    assert first["t"] == "welcome", first
    await t.close()
    # a setting only a restart of the unit applies (the journal's path) is not taken by a worker
    cfg_path.write_text(cfg_path.read_text().replace('journal = "journal"', 'journal = "elsewhere"'))
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    wait_for(lambda: len(p.events("cp_started")) == 3, 15, what="the third worker listening")
    assert p.events("config_reread_incomplete") and not (tmp_path / "elsewhere").exists()
    cfg_path.write_text("[cp\nbroken")
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    wait_for(lambda: len(p.events("cp_started")) == 4, 15, what="the fourth worker listening")
    assert p.events("config_reread_failed")
    # on the config the workers before it applied, not the master's start: T00007, added by
    # SIGHUP, is still known
    for name in ("T00001", "T00007"):
        t = await FakeTerminal.connect(term_addr, name)
        assert (await t.wait(lambda m: m["t"] in ("welcome", "error")))["t"] == "welcome", name
        await t.close()
    assert "last applied" in p.events("config_reread_failed")[-1]["msg"]


def test_a_worker_forked_again_keeps_the_host_timeout_a_reload_applied(supervised: Any, tmp_path: Path) -> None:
    """A file whose host_timeout only fits a shorter host_lease (a change meant for the next
    restart of the unit): the next worker keeps the host_timeout that ran, the one a SIGHUP
    applied, not the master's start's, and says so."""
    p = supervised(host_timeout=0.5, host_lease=0.35)
    p.wait_event("cp_started", timeout=15)
    cfg_path = tmp_path / "cp.toml"
    text = cfg_path.read_text()
    assert "host_timeout = 0.5" in text and "host_lease = 0.35" in text, text
    cfg_path.write_text(text.replace("host_timeout = 0.5", "host_timeout = 0.8"))
    os.kill(p.popen.pid, signal.SIGHUP)
    p.wait_event("config_reloaded", timeout=15)
    cfg_path.write_text(text.replace("host_timeout = 0.5", "host_timeout = 0.3").replace("host_lease = 0.35", "host_lease = 0.15"))
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    wait_for(lambda: len(p.events("cp_started")) == 2, 15, what="the next worker listening")
    msg = p.events("config_reread_incomplete")[-1]["msg"]
    assert "cp.host_timeout (kept at 0.8 s: below the running host_lease 0.35 s + margin)" in msg, msg


def test_a_worker_killed_while_it_leaves_its_config_leaves_the_one_before(tmp_path: Path) -> None:
    """The config a worker applied goes into the older of two slots, its data before its header:
    a worker killed in the middle of that store leaves the previous config whole."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.supervise import AppliedConfig

    ac = AppliedConfig()
    assert ac.load(CPConfig) is None
    first = load(cp_config(tmp_path, terminals=5, durability="none"), CPConfig)
    ac.store(first)
    second = load(cp_config(tmp_path, terminals=7, durability="none"), CPConfig)
    ac.store(second)
    assert len(ac.load(CPConfig).terminal_table) == 7
    # the newer slot (the second's) torn, as by a worker killed while writing it: the first is read
    ac.mem[AppliedConfig.SLOT + AppliedConfig.HEAD.size + 5] ^= 0xFF
    assert len(ac.load(CPConfig).terminal_table) == 5


async def test_a_config_a_waiting_worker_checked_is_kept_for_the_next_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting CP (takeover = "on_wake") checks the file at SIGHUP and applies it only once it
    serves; a worker that then exits 1 at its takeover left nothing for the next one, which ran
    on the file or, broken by then, on the master's start config (the added terminals refused).
    The checked config is kept for it; one that fails its check is not."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import supervise
    from hsb.cp.config import CPConfig

    (tmp_path / "j").mkdir()
    cfg_path = cp_config(tmp_path, terminals=5, journal="j", takeover="on_wake")
    s = srv.CPServer(load(cfg_path, CPConfig), SECRET, str(cfg_path))
    applied = supervise.AppliedConfig()
    monkeypatch.setattr(supervise, "APPLIED", applied)
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace("count = 5", "count = 7"))
    await s._check_config()
    kept = applied.load(CPConfig)
    assert kept is not None and "T00007" in kept.terminal_table
    cfg_path.write_text(text.replace("count = 5", "count = 9").replace("[cp]", "[cp\n"))  # fails its check
    await s._check_config()
    kept = applied.load(CPConfig)
    assert kept is not None and len(kept.terminal_table) == 7
    assert len(s.cfg.terminal_table) == 5  # (applied only once it serves)


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


def test_a_reload_passed_on_as_the_worker_starts_is_not_lost() -> None:
    """The master passes a SIGHUP (or SIGUSR1) on to a worker it has just forked, where it waits
    blocked: the worker set those to SIG_IGN before its own handlers, which discards a pending
    signal, so the reload was lost. Run in a process of its own (signal dispositions)."""
    out = python_lines(
        "import os, signal",
        "from hsb.cp import supervise",
        "signal.pthread_sigmask(signal.SIG_BLOCK, supervise.PASSED_ON)",
        "os.kill(os.getpid(), signal.SIGHUP)",
        "os.kill(os.getpid(), signal.SIGUSR1)",
        "supervise.worker_signals()",
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, supervise.PASSED_ON)",
        "print(sorted(int(s) for s in supervise.EARLY_SIGNALS))",
    )
    assert json.loads(out) == sorted([int(signal.SIGHUP), int(signal.SIGUSR1)]), out


def test_a_reload_sent_while_the_worker_dies_goes_to_the_next_worker(supervised: Any, tmp_path: Path) -> None:
    """`systemctl reload` while the worker is dying (its teardown, 0.1-0.2 s at 10,000 terminals,
    before the master notices): the master passed it on to the dying worker, where it was lost;
    it goes to the next worker, which reloads."""
    p = supervised()
    p.wait_event("cp_started", timeout=15)
    master = p.popen.pid
    worker = worker_of(master)
    assert p.events("config_reloaded") == []
    os.kill(master, signal.SIGSTOP)  # the master notices the death only after SIGCONT
    try:
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: procstat.state(worker) == "Z", 10, what="the worker dead")
        os.kill(master, signal.SIGHUP)
    finally:
        os.kill(master, signal.SIGCONT)
    wait_for(lambda: len(p.events("cp_started")) == 2, 15, what="the next worker listening")
    wait_for(lambda: p.events("config_reloaded"), 15, what="the reload, in the next worker")


async def test_a_clean_stop_under_its_master_refuses_new_connections_at_once(supervised: Any, tmp_path: Path) -> None:
    """SIGTERM to the master while its worker drains (the journal's storage held: the stop waits
    about 2 s for a group commit): from the moment the worker stops serving, a new connection is
    refused, as without a master. The listening sockets are the master's too; merely closed in the
    worker they went on completing connections that nobody would accept, reset only when the
    master exited (a terminal saw a connect succeed and its hello go unanswered)."""
    import tomllib

    from hsb.wire.client import request
    from tests.support.hostclient import FakeTerminal
    from tests.support.procs import SECRET, addr, arm_faults

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
    # the worker is still draining (its journal's storage held): a connect now is refused
    with pytest.raises(ConnectionRefusedError):
        _, w = await asyncio.open_connection(term_host, int(term_port))
        w.close()
    assert p.popen.poll() is None and not gone(worker)  # still inside the stop while it was refused
    assert await asyncio.to_thread(p.popen.wait, 15) == 0
    await t.close()


async def test_a_worker_forked_again_on_certificates_broken_since_serves_on_those_loaded_before(supervised: Any, tmp_path: Path) -> None:
    """The certificates were checked at the start; a worker forked again after a crash reads them
    again. Broken meanwhile (a renewal copied file by file, a key left readable by others), that
    worker ended with exit 78, on which systemd does not restart the unit: a crash turned into
    an outage until someone stepped in. It serves on the certificates the worker before it
    loaded, says so in one line, and a reload takes the files once they are fixed."""
    import tomllib

    from hsb.ctl.tls_cmd import make_ca_and_certs
    from hsb.term.connector import tls_context
    from hsb.wire.client import request

    tls = tmp_path / "tls"
    make_ca_and_certs(tls, ["cp", "hsbctl"])
    p = supervised(tls={"ca_file": str(tls / "ca.pem"), "cert_file": str(tls / "cp.pem"), "key_file": str(tls / "cp.key")})
    p.wait_event("cp_started", timeout=15)
    good = (tls / "cp.pem").read_bytes()
    (tls / "cp.pem").write_text("not a certificate\n")
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    ev = p.wait_event("tls_files_broken_since", timeout=15)
    assert "cert_file" in ev["error"], ev
    await until(lambda: len(p.events("cp_started")) >= 2, 15, what="the next worker serving")
    assert p.popen.poll() is None
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    ctx = tls_context(str(tls / "ca.pem"), str(tls / "hsbctl.pem"), str(tls / "hsbctl.key"))
    st = await request(*addr(c["admin_listen"]), SECRET, {"t": "status"}, ssl=ctx)  # its certificate still the one loaded
    assert st["data"]["tls"]["cert_file"] == str(tls / "cp.pem"), st["data"]["tls"]
    (tls / "cp.pem").write_bytes(good)  # fixed: a reload reads the files again
    os.kill(p.popen.pid, signal.SIGHUP)
    p.wait_event("tls_reloaded", timeout=15)
    out = (tmp_path / "cp.log").read_text()
    assert "Traceback" not in out, out[-2000:]


def test_a_reload_or_wake_sent_while_a_plain_hsbcpd_starts_is_noted_not_fatal(tmp_path: Path) -> None:
    """Without --supervise too: SIGHUP's default action ends the process, and SIGUSR1 was
    ignored (a wake lost) until the loop had its handlers. From main()'s first step both are
    noted and acted on once the loop is up."""
    code = (
        "import os, signal, sys\n"
        "from hsb.cp import main as m, supervise\n"
        "def load(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    print(sorted(supervise.EARLY_SIGNALS)); sys.exit(0)\n"
        "m.load_or_exit = load\n"
        "m.main(['--config', 'x.toml'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
    assert r.stdout.strip() == str(sorted([int(signal.SIGHUP), int(signal.SIGUSR1)])), r.stdout


def outs(out: str) -> list[str]:
    """The OUT lines of a worker and its master, which share stdout with the master's log lines:
    each OUT line is one write (os.write: a print of several values may be several writes, and a
    log line's newline landed in the middle of one), but it may land after a log line's text and
    before its newline."""
    return re.findall(r"OUT ([^\n]*)", out)


def numbered_work(tmp_path: Path) -> list[str]:
    """The lines that begin a child script's `def work(info):` with `n`, how many workers the
    master forked before this one (each worker adds one to a file in tmp_path: a fork shares no
    memory with the next)."""
    count = tmp_path / "workers"
    return [
        "from pathlib import Path",
        f"count = Path({str(count)!r})",
        "def work(info):",
        "    n = len(count.read_text()) if count.exists() else 0",
        "    count.write_text('x' * (n + 1))",
    ]


def test_a_reload_noted_before_the_master_supervises_goes_to_the_first_worker_only() -> None:
    """A SIGHUP noted while hsbcpd started (before the master's own handlers) is the first
    worker's: it stayed in the master's list, and every worker forked after a crash reloaded
    (or, a SIGUSR1, looked for a takeover) again, unasked. Run in a process of its own."""
    out = python_lines(
        "import os, signal, sys",
        "from hsb.cp import supervise",
        "supervise.record_early_signals()",
        "os.kill(os.getpid(), signal.SIGHUP)  # as systemctl reload would, during the imports",
        # (its handler runs in the main thread once the signal is taken, which another thread of
        # the process may do a moment later: noted before the master supervises, as the test says)
        "import time",
        "deadline = time.monotonic() + 5",
        "while not supervise.EARLY_SIGNALS and time.monotonic() < deadline:",
        "    time.sleep(0.001)",
        "def work(info):",
        "    os.write(1, f\"OUT {info['restarts']} {sorted(int(s) for s in supervise.EARLY_SIGNALS)}\\n\".encode())",
        "    if info['restarts'] == 0:",
        "        os.kill(os.getpid(), signal.SIGKILL)  # a crash: the master forks the next",
        "    return 0",
        "sys.exit(supervise.supervise(work))",
    )
    assert outs(out) == [f"0 [{int(signal.SIGHUP)}]", "1 []"], out


def test_a_worker_that_dies_while_it_ends_for_good_is_not_forked_again() -> None:
    """A worker that had begun to end for good (superseded, exit 75 meant) and then died of a
    signal (an OOM kill while it stopped): the master forked another, on listeners already shut
    down, which took the journal back from the newer CP. It exits with the code meant instead
    (75: systemd's RestartPreventExitStatus holds). Run in a process of its own."""
    out = python_lines(
        "import os, signal, sys",
        "from hsb.cp import supervise",
        "def work(info):",
        "    os.write(1, f\"OUT worker {info['restarts']}\\n\".encode())",
        "    supervise.mark_final(75)",
        "    os.kill(os.getpid(), signal.SIGKILL)",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert outs(out) == ["worker 0", "master 75"], out
    assert "cp_worker_died_ending" in out and "cp_worker_died " not in out, out


def test_a_superseded_cp_whose_failed_stop_then_hangs_exits_75_at_the_watchdog() -> None:
    """A superseded CP (75 meant) whose stop fails says so through die(), which arms the exit
    watchdog with 1: a teardown that then hangs past its grace (a thread in a blocked write to a
    mount in trouble) exited 1, which systemd starts again, to take the journal back from the
    newer CP. The watchdog exits with the code meant. Run in a process of its own."""
    code = "\n".join(
        [
            "import threading",
            "from hsb import cli",
            "from hsb.cp import supervise",
            "supervise.mark_final(75)",
            "cli.exit_watchdog(1, 0.2)  # (as die() arms it)",
            "threading.Event().wait(30)  # a teardown that hangs",
        ]
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert "exiting with 75 now" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize(
    ("meant", "end", "master", "event"),
    [
        (75, "raise RuntimeError('EIO closing the journal')", 75, "cp_stop_failed"),
        (0, "os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL, "cp_worker_died_stopping"),
        (0, "return 1", 1, None),
    ],
)
def test_a_worker_that_fails_or_dies_while_it_stops_is_not_forked_again(tmp_path: Path, meant: int, end: str, master: int, event: str | None) -> None:
    """A worker that had begun to end for good (`mark_final`) and then failed (a superseded one:
    an error in its stop exited 1, which systemd started again, and it took the journal back from
    the newer CP; now 75, as meant), or, in a clean stop, died of a signal or exited 1 (that
    status, no other worker; one forked again says so and exits 0). Run in a process of its own."""
    out = python_lines(
        "import os, signal, sys",
        "from hsb.cp import supervise",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    if n:",
        "        return 0",
        f"    supervise.mark_final({meant})",
        f"    {end}",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert outs(out) == ["worker 0", f"master {master}"], out
    assert event is None or event in out, out
    assert "cp_worker_died " not in out and "cp_worker_failed" not in out and "cp_worker_died_ending" not in out, out


def test_a_cp_that_fails_while_it_stops_superseded_exits_as_it_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a master too: hsbcpd's run ending in an error (or die()'s exit 1) after its stop
    began for good meaning 75 exits 75; before any such stop, the error is its own."""
    from hsb.cp import supervise

    def fail() -> int:
        raise SystemExit(1)

    from hsb import cli

    monkeypatch.setattr(cli, "MEANT_EXIT", 0)  # (and back after: mark_final sets it below)
    with pytest.raises(SystemExit):
        supervise.ending_as_meant(fail)
    supervise.mark_final(75)
    assert supervise.ending_as_meant(fail) == 75
    assert supervise.ending_as_meant(lambda: 1 // 0) == 75
    with pytest.raises(SystemExit):  # (its own exit, as meant)
        supervise.ending_as_meant(lambda: sys.exit(75))
    assert supervise.ending_as_meant(lambda: 75) == 75


def test_a_wake_a_worker_took_before_it_failed_goes_to_the_next_worker(tmp_path: Path) -> None:
    """keepalived's wake (SIGUSR1) reaches a waiting worker, whose takeover then fails for a
    reason that may pass (exit 1: the journal's storage not answering, segments another CP still
    deletes): the master forked the next worker without it, which (with wake_file = "", SIGUSR1
    only) waited until it had seen the heartbeat still for takeover_stale, although keepalived had
    made this machine master already. The wake goes to every worker forked again after such an
    exit, until one does not exit 1; a worker that was never woken passes none on. Run in a process
    of its own (signal dispositions)."""
    out = python_lines(
        "import os, signal, sys, time",
        "from hsb.cp import supervise",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT {n} {sorted(int(s) for s in supervise.EARLY_SIGNALS)}\\n'.encode())",
        "    if n == 1:  # keepalived wakes it (through the master), then its takeover fails",
        "        os.kill(os.getppid(), signal.SIGUSR1)",
        "        deadline = time.monotonic() + 10",
        "        while signal.SIGUSR1 not in supervise.EARLY_SIGNALS and time.monotonic() < deadline:",
        "            time.sleep(0.001)",
        "    return 0 if n == 3 else 1",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    usr1 = int(signal.SIGUSR1)
    assert outs(out) == ["0 []", "1 []", f"2 [{usr1}]", f"3 [{usr1}]", "master 0"], out
