"""Tests from a mutation audit of hsb/cp/supervise.py (`hsbcpd --supervise`): each pins a
behaviour that a single-point change of the module broke while every other supervise test still
passed: a shared slot's header read whole or not at all, the TLS slot's type check, how a
worker's end is read from /proc (exiting but not yet a zombie, being reaped, an older kernel's
shorter stat), a killed worker not waited for before the next fork but reaped before the master
exits, nothing buffered written twice across the fork, the master's objects frozen out of the
collector, a wake owed to the next worker once, a reload that reaches a worker just forked, the
default window and its last instant (for deaths and for failed starts), and FORKED_AGAIN for
every worker but the first. The pure parts run in-process; the master's loop in child scripts of
their own (signal dispositions, fork), with test_cp_supervise_edges' recording `log` and
watchdog and, where a boundary matters, an exact clock."""

from __future__ import annotations

import signal
from pathlib import Path

import msgpack
import pytest

from hsb import procstat
from hsb.cp import supervise
from tests.support.procs import python_lines
from tests.support.supervised import numbered_work, outs
from tests.test_cp_supervise_edges import RECORDING, events

pytestmark = pytest.mark.timeout(60)


def test_a_header_with_a_sequence_but_no_length_is_not_read() -> None:
    """A header half written (its sequence number there, its length still 0: a worker killed in
    the middle of writing it) makes its slot empty, not the newest data (an empty config): the
    other slot's data is read."""
    a = supervise.Applied(64)
    assert a.store_data(b"whole")
    assert a._slot(0) == (1, b"whole")
    a.HEAD.pack_into(a.mem, a.slot, 7, 0, 0)  # slot 1: seq 7, n 0 (crc32(b"") is 0 too)
    assert a._slot(1) == (0, None)
    assert a.load_data() == b"whole"


def test_tls_bytes_that_are_not_a_mapping_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the TLS slot holds is used only if it is a mapping of file names to bytes: anything
    else is no TLS files kept (the worker reads the files)."""
    monkeypatch.setattr(supervise, "APPLIED_TLS", supervise.Applied(supervise.TLS_SLOT))
    assert supervise.APPLIED_TLS is not None
    assert supervise.APPLIED_TLS.store_data(msgpack.packb([b"cert", b"key"]))
    assert supervise.applied_tls() is None


def _stat(state: str, flags: int = 0, code: int = 0, n: int = procstat.EXIT_CODE + 3) -> list[str]:
    f = ["0"] * n
    f[procstat.STATE] = state
    if n > procstat.FLAGS:
        f[procstat.FLAGS] = str(flags)
    if n > procstat.EXIT_CODE:
        f[procstat.EXIT_CODE] = str(code)
    return f


@pytest.mark.parametrize(
    ("stat", "expect"),
    [
        (_stat("R", procstat.PF_EXITING, 9), 9),  # killed, still closing its descriptors
        (_stat("D", procstat.PF_EXITING | 0x40, 3 << 8), 3 << 8),  # exiting 3
        (_stat("X", 0, 9), 9),  # dead, being reaped
        (_stat("Z", 0, 3 << 8), 3 << 8),
        (_stat("S", 0x40, 9), None),  # alive (a stale exit code field means nothing)
        (_stat("Z", 0, 9, n=procstat.EXIT_CODE), None),  # a kernel without the exit code field
        (None, None),  # gone
    ],
)
def test_how_a_worker_ended_is_read_while_it_exits(monkeypatch: pytest.MonkeyPatch, stat: list[str] | None, expect: int | None) -> None:
    """The master's early word on a dead worker, from /proc/PID/stat: its exit code once it is
    exiting (PF_EXITING, before the kernel closes its descriptors), a zombie, or being reaped
    (X); nothing while it runs, when it is gone, or on a kernel whose stat has no exit code."""
    monkeypatch.setattr(procstat, "fields", lambda pid: stat)
    assert supervise._exit_status(12345) == expect


def test_a_worker_killed_is_not_waited_for_before_the_next_fork(tmp_path: Path) -> None:
    """A worker killed by a signal is reaped once the kernel has torn it down (SIGCHLD): the
    master forks the next one without a blocking waitpid on it (10,000 sockets take the kernel
    0.1-0.2 s to close). One that exits is waited for. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        "real_waitpid = os.waitpid",
        "def waitpid(pid, flags):",
        "    if not flags & os.WNOHANG:",
        "        os.write(1, f'OUT waited {pid}\\n'.encode())",
        "    return real_waitpid(pid, flags)",
        "os.waitpid = waitpid",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n} {os.getpid()}\\n'.encode())",
        "    if n == 0:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    got = events(out, "worker", "waited", "master")
    first, second = (o.split()[2] for o in got if o.startswith("worker "))
    assert got[:2] == [f"worker 0 {first}", f"worker 1 {second}"], out
    assert f"waited {second}" in got and got[-1] == "master 0", out


def test_output_buffered_before_a_fork_is_written_once() -> None:
    """The master flushes its stdout and stderr before each fork: a line it had buffered (stdout
    a pipe) is not written again by the worker when it leaves. Run in a process of its own."""
    out = python_lines(
        "import sys",
        "from hsb.cp import supervise",
        "sys.stdout = open(1, 'w', buffering=65536, closefd=False)  # (block buffered even under PYTHONUNBUFFERED)",
        "sys.stdout.write('OUT buffered\\n')  # (not flushed yet)",
        "code = supervise.supervise(lambda info: 0)",
        "sys.stdout.write(f'OUT master {code}\\n')",
    )
    assert outs(out) == ["buffered", "master 0"], out


def test_the_masters_objects_are_frozen_out_of_the_workers_collector() -> None:
    """What the master built before its first fork is moved out of the collector's reach
    (gc.freeze): a worker's full collection then does not walk, and so copy, the pages it shares
    with the master. Run in a process of its own."""
    out = python_lines(
        "import gc, os",
        "from hsb.cp import supervise",
        "before = gc.get_freeze_count()",
        "def work(info):",
        "    os.write(1, f'OUT frozen {before == 0 and gc.get_freeze_count() > 0}\\n'.encode())",
        "    return 0",
        "supervise.supervise(work)",
    )
    assert outs(out) == ["frozen True"], out


def test_a_wake_owed_twice_to_a_worker_forked_after_a_failed_start_is_sent_once(tmp_path: Path) -> None:
    """A worker woken (SIGUSR1) that then exits 1 owes the wake to the next; another SIGUSR1
    that came while it died is owed already: the next worker is woken once, not twice. Run in
    a process of its own."""
    out = python_lines(
        *RECORDING,
        "real_exit_status = supervise._exit_status",
        "sent = []",
        "def exit_status(pid):",
        "    st = real_exit_status(pid)",
        "    if st is not None and not sent:  # the worker has ended: a wake comes now",
        "        sent.append(pid)",
        "        os.kill(os.getpid(), signal.SIGUSR1)",
        "    return st",
        "supervise._exit_status = exit_status",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n} {sorted(int(s) for s in supervise.EARLY_SIGNALS)}\\n'.encode())",
        "    if n == 0:",
        "        os.kill(os.getppid(), signal.SIGUSR1)  # woken through the master",
        "        deadline = time.monotonic() + 10",
        "        while signal.SIGUSR1 not in supervise.EARLY_SIGNALS and time.monotonic() < deadline:",
        "            time.sleep(0.001)",
        "        return 1",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    usr1 = int(signal.SIGUSR1)
    assert events(out, "worker", "master") == ["worker 0 []", f"worker 1 [{usr1}]", "master 0"], out


# The master's clock made exact (hsb.cp.supervise's `time`): monotonic() is CLOCK[0], which a
# wait's sleep moves on by what it sleeps, and `later(s)` moves on by `s` once the next reading
# (a worker's start, say) has been taken, from a whole second on.
CLOCK = [
    "import types",
    "CLOCK, AFTER = [1000.0], [0.0]",
    "def monotonic():",
    "    now = CLOCK[0]",
    "    CLOCK[0] += AFTER[0]",
    "    AFTER[0] = 0.0",
    "    return now",
    "def sleep(s):",
    "    CLOCK[0] += s",
    "def later(s):",
    "    CLOCK[0] = float(int(CLOCK[0]) + 1)  # (a whole number: the difference is then exact)",
    "    AFTER[0] = s",
    "supervise.time = types.SimpleNamespace(monotonic=monotonic, sleep=sleep, time=time.time)",
]


def test_deaths_count_toward_a_crash_loop_for_a_minute_by_default(tmp_path: Path) -> None:
    """Without a `window` given, a death counts toward a crash loop for RESTARTS_WINDOW_S (60 s),
    its last instant included: two deaths exactly 60 s apart are a crash loop (with
    restarts_max 1), a death 61 s later is not. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        *CLOCK,
        "HOOKS['cp_worker_died'] = lambda: CLOCK.__setitem__(0, CLOCK[0] + 60)",
        "HOOKS['cp_worker_crash_loop'] = lambda: CLOCK.__setitem__(0, CLOCK[0] + 61)",
        *numbered_work(tmp_path),
        "    if n < 3:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work, restarts_max=1)}\\n'.encode())",
    )
    assert events(out, "cp_worker_died", "cp_worker_crash_loop", "master") == [
        'cp_worker_died {"restarts": 1, "signal": "SIGKILL"}',
        'cp_worker_crash_loop {"deaths": 2, "delay_s": 0.5, "restarts": 2, "signal": "SIGKILL"}',
        'cp_worker_died {"restarts": 3, "signal": "SIGKILL"}',
        "master 0",
    ], out


def test_a_worker_up_for_exactly_a_window_clears_the_failed_starts_before_it(tmp_path: Path) -> None:
    """A worker that exits 1 after it was up for a whole `window` (exactly 60 s) is a first
    failure again (0.1 s), not the second in a row (0.2 s). Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        *CLOCK,
        "HOOKS['cp_worker_failed'] = lambda: HOOKS.__setitem__('cp_worker_started', lambda: later(60.0))",
        *numbered_work(tmp_path),
        "    return 0 if n == 2 else 1",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "cp_worker_failed", "master") == [
        'cp_worker_failed {"delay_s": 0.1, "exit": 1, "failures": 1}',
        'cp_worker_failed {"delay_s": 0.1, "exit": 1, "failures": 1}',
        "master 0",
    ], out


@pytest.mark.parametrize(
    "hook",
    [
        "",  # the next worker exits 0: the master ends with its code
        "HOOKS['cp_worker_crash_loop'] = lambda: os.kill(os.getpid(), signal.SIGTERM)",  # a stop in the wait
    ],
    ids=["an_exit", "a_stop"],
)
def test_a_killed_worker_not_yet_torn_down_is_reaped_before_the_master_exits(tmp_path: Path, hook: str) -> None:
    """A worker killed and left to the SIGCHLD reaper while the kernel tears it down is reaped
    before the master exits, whether it ends with the next worker's exit or with a stop during
    a crash loop's wait: no zombie left behind. Here the kernel never says a worker is gone
    without being waited for (WNOHANG answers 0). Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        hook,
        "real_waitpid = os.waitpid",
        "killed = []",
        "def waitpid(pid, flags):",
        "    if flags & os.WNOHANG:",
        "        killed.append(pid)",
        "        return 0, 0",
        "    return real_waitpid(pid, flags)",
        "os.waitpid = waitpid",
        *numbered_work(tmp_path),
        "    if n == 0:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0",
        "code = supervise.supervise(work, restarts_max=0 if HOOKS else 5)",
        "left = []",
        "for pid in set(killed):",
        "    try:",
        "        left.append(real_waitpid(pid, os.WNOHANG)[0])",
        "    except ChildProcessError:",
        "        pass",
        "os.write(1, f'OUT master {code} {bool(killed)} {left}\\n'.encode())",
    )
    assert events(out, "master") == ["master 0 True []"], out


def test_a_reload_that_reaches_a_worker_just_forked_is_kept_for_it() -> None:
    """The master blocks the signals it passes on across fork(): a SIGHUP that reaches the new
    worker before its own handlers waits for them and is noted (an early reload), instead of
    running the master's handler, inherited, in the worker (where it was lost). Run in a process
    of its own (signal dispositions, fork)."""
    out = python_lines(
        "import os, signal",
        "from hsb.cp import supervise",
        "real_fork = os.fork",
        "def fork():",
        "    pid = real_fork()",
        "    if pid == 0:",
        "        os.kill(os.getpid(), signal.SIGHUP)  # (as if `systemctl reload` came now)",
        "    return pid",
        "os.fork = fork",
        "def work(info):",
        "    os.write(1, f'OUT worker {sorted(int(s) for s in supervise.EARLY_SIGNALS)}\\n'.encode())",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert outs(out) == [f"worker [{int(signal.SIGHUP)}]", "master 0"], out


def test_only_workers_after_the_first_are_forked_again(tmp_path: Path) -> None:
    """The master's first worker runs on the config the master checked at its start
    (FORKED_AGAIN False); every later one, after a death or a failed start, reads it again
    (True). Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n} {supervise.FORKED_AGAIN}\\n'.encode())",
        "    if n == 0:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 1 if n == 1 else 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "worker", "master") == ["worker 0 False", "worker 1 True", "worker 2 True", "master 0"], out
