"""Reloads (SIGHUP) and wakes (SIGUSR1) across a supervised CP's workers (hsb.cp.supervise):
one sent while a worker starts, dies or fails its start is acted on by the worker that serves,
not lost; a worker forked again runs on the config as reloaded (its terminals, its host
timeout), not on a config a killed worker left half made; a config a waiting worker checked is
kept for the next; a reload noted before the master supervises goes to the first worker only;
and a plain hsbcpd that gets one as it starts notes it. Real processes, in process, and child
scripts in a process of their own (signal dispositions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hsb import procstat
from tests.support.procs import SECRET, cp_config, python_lines, until, wait_for
from tests.support.supervised import numbered_work, outs, worker_of

pytestmark = pytest.mark.timeout(120)


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
    server = srv.CPServer(load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig), b"s" * 32, str(tmp_path / "cp.toml"))
    server.take_early_signals()
    assert server.reload_requested and server.wake_requested and early == []


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
    got = ac.load(CPConfig)
    assert got is not None and len(got.terminal_table) == 7
    # the newer slot (the second's) torn, as by a worker killed while writing it: the first is read
    ac.mem[AppliedConfig.SLOT + AppliedConfig.HEAD.size + 5] ^= 0xFF
    got = ac.load(CPConfig)
    assert got is not None and len(got.terminal_table) == 5


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
