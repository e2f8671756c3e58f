"""Edges of `hsbcpd --supervise` (hsb.cp.supervise) a mutation audit found untested: the shared
slots' bounds and order, the waits' first values, the worker's signal dispositions and its end
of the pipe, a stop by SIGINT, a fork that fails, a worker that raises or calls sys.exit(), the
crash loop's count against `restarts_max` and `window`, the watchdog pings around a wait, a stop
during a wait, and reloads owed while no worker runs. The master's own loop runs in child
scripts of their own (signal dispositions, fork), with a recording `log` and watchdog."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hsb.cp import supervise
from tests.support.procs import python_lines
from tests.support.supervised import numbered_work, outs

pytestmark = pytest.mark.timeout(120)

# A child script's first lines: the master's log and watchdog replaced by recorders, each event an
# OUT line (`event {fields}`, the fields that do not change from run to run); HOOKS[event]() runs
# after the event is recorded, in the master.
RECORDING = [
    "import json, os, signal, sys, time",
    "from hsb.cp import supervise",
    "KEEP = ('exit', 'failures', 'delay_s', 'deaths', 'signal', 'restarts')",
    "HOOKS = {}",
    "class Log:",
    "    def _ev(self, event, **kw):",
    "        keep = {k: v for k, v in kw.items() if k in KEEP}",
    "        os.write(1, f'OUT {event} {json.dumps(keep, sort_keys=True)}\\n'.encode())",
    "        HOOKS.get(event, lambda: None)()",
    "    info = warning = error = _ev",
    "supervise.log = Log()",
    "class Watchdog:",
    "    def tick(self, now, force=False):",
    "        os.write(1, f'OUT tick {force}\\n'.encode())",
    "        HOOKS.get('tick', lambda: None)() if not force else None",
    "supervise.Watchdog = Watchdog",
]


def events(out: str, *names: str) -> list[str]:
    """The recorded OUT lines whose first word is one of `names`."""
    return [o for o in outs(out) if o.split(" ", 1)[0] in names]


def test_a_slot_takes_exactly_what_fits_and_a_store_writes_the_older_slot() -> None:
    """Data that fills a slot to its last byte is kept (and found again), a byte more is refused
    and leaves the data stored before; each store writes the slot of the older data, so the one
    before stays whole beside it."""
    a = supervise.Applied(64)
    room = 64 - a.HEAD.size
    assert a.load_data() is None
    assert a.store_data(b"a" * room)
    assert a.load_data() == b"a" * room
    assert not a.store_data(b"b" * (room + 1))
    assert a.load_data() == b"a" * room
    for data in (b"B", b"C", b"D"):
        assert a.store_data(data)
        assert a.load_data() == data
    assert {a._slot(0)[1], a._slot(1)[1]} == {b"C", b"D"}


def test_a_config_too_large_for_its_slot_is_logged_one_that_fits_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """`applied_config_not_kept` says a worker started again would not find the config applied:
    logged when it does not fit, never when it was kept."""

    class Cfg:
        def __init__(self, n: int) -> None:
            self.n = n

        def model_dump(self, mode: str) -> dict[str, Any]:
            return {"x": "y" * self.n}

    monkeypatch.setattr(supervise.AppliedConfig, "SLOT", 256)
    applied = supervise.AppliedConfig()
    with capture_logs() as logs:
        applied.store(Cfg(10))
    assert [e["event"] for e in logs] == []
    with capture_logs() as logs:
        applied.store(Cfg(1000))
    assert [e["event"] for e in logs] == ["applied_config_not_kept"]
    assert applied.load_data() is not None  # the one that fit is still there


def test_tls_files_are_kept_for_the_next_worker_only_under_a_master(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a master (a plain hsbcpd) `keep_tls` keeps nothing and does not fail; under one,
    the next worker finds the bytes the last one loaded, and files too large to keep are logged."""
    monkeypatch.setattr(supervise, "APPLIED_TLS", None)
    with capture_logs() as logs:
        supervise.keep_tls({"cert": b"C"})
    assert logs == []
    assert supervise.applied_tls() is None
    monkeypatch.setattr(supervise, "APPLIED_TLS", supervise.Applied(supervise.TLS_SLOT))
    supervise.keep_tls({"cert": b"C", "key": b"K"})
    assert supervise.applied_tls() == {"cert": b"C", "key": b"K"}
    with capture_logs() as logs:
        supervise.keep_tls({"cert": b"x" * supervise.TLS_SLOT})
    assert [e["event"] for e in logs] == ["applied_tls_not_kept"]
    assert supervise.applied_tls() == {"cert": b"C", "key": b"K"}


def test_the_waits_begin_at_their_first_values_and_double_to_their_caps() -> None:
    """The sixth death in a window (the first past RESTARTS_MAX) waits 0.5 s, the next 1 s, up
    to 30 s; the first failed start waits 0.1 s, the next 0.2 s, up to 5 s."""
    assert [supervise.crash_loop_delay(k) for k in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert supervise.crash_loop_delay(40) == 30.0
    assert [supervise.failed_delay(k) for k in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert supervise.failed_delay(40) == 5.0


def test_a_workers_signal_dispositions_before_the_cps_own_handlers() -> None:
    """A stop (TERM, INT) ends a worker that has no handlers of its own yet (SIG_DFL), SIGUSR2
    is ignored (its default would kill it), a reload or a wake is noted, and SIGCHLD is the
    default again, not the master's reaper. Run in a process of its own (signal dispositions)."""
    out = python_lines(
        "import json, signal",
        "from hsb.cp import supervise",
        "signal.signal(signal.SIGCHLD, lambda *a: None)  # (as the master has it)",
        "supervise.worker_signals()",
        "d = {s.name: signal.getsignal(s) for s in (*supervise.PASSED_ON, signal.SIGCHLD)}",
        "print(json.dumps({k: v.name if isinstance(v, signal.Handlers) else 'noted' for k, v in d.items()}))",
    )
    assert json.loads(out) == {
        "SIGTERM": "SIG_DFL",
        "SIGINT": "SIG_DFL",
        "SIGHUP": "noted",
        "SIGUSR1": "noted",
        "SIGUSR2": "SIG_IGN",
        "SIGCHLD": "SIG_DFL",
    }, out


def test_a_workers_end_of_the_pipe_is_moved_to_its_highest_descriptor() -> None:
    """The pipe's write end goes to the highest descriptor the process may have (the soft limit
    raised to it), the low one is closed (else the master sees the end only when that one is
    closed too), and `mark_final` writes its byte there. Run in a process of its own (limits)."""
    out = python_lines(
        "import json, os, resource",
        "from hsb.cp import supervise",
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)",
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))  # (the CP raises it later)",
        "top = min(hard if hard != resource.RLIM_INFINITY else supervise.HIGH_FD_MAX, supervise.HIGH_FD_MAX)",
        "r, w = os.pipe()",
        "supervise._hold_high(w)",
        "try:",
        "    os.fstat(w)",
        "    low_open = True",
        "except OSError:",
        "    low_open = False",
        "supervise.mark_final(75)",
        "print(json.dumps({'at_top': supervise.END_FD == top - 1, 'soft': resource.getrlimit(resource.RLIMIT_NOFILE)[0] == top,",
        "                  'low_open': low_open, 'said': os.read(r, 1)[0]}))",
    )
    assert json.loads(out) == {"at_top": True, "soft": True, "low_open": False, "said": 75}, out


def test_a_sigint_before_the_workers_handlers_is_a_stop_with_0() -> None:
    """SIGINT to the master is a stop, as SIGTERM is: passed on to a worker still starting, it
    ends it (SIG_DFL), and the master exits 0 without forking another (not a death restarted,
    nor 128 + SIGINT). Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        "def work(info):",
        "    os.write(1, f\"OUT worker {info['restarts']}\\n\".encode())",
        "    if info['restarts'] == 0:",
        "        os.kill(os.getppid(), signal.SIGINT)",
        "        deadline = time.monotonic() + 20",
        "        while time.monotonic() < deadline:  # (ended by the SIGINT passed on)",
        "            time.sleep(0.01)",
        "        return 9",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "worker", "master", "cp_worker_died", "cp_worker_died_stopping") == ["worker 0", "master 0"], out


def test_a_fork_that_fails_ends_the_master_with_1() -> None:
    """A master that cannot fork a worker (memory, the process limit) says so and exits 1, so
    that systemd starts it again. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        "import errno",
        "def fork():",
        "    raise OSError(errno.EAGAIN, 'Resource temporarily unavailable')",
        "os.fork = fork",
        "os.write(1, f'OUT master {supervise.supervise(lambda info: 0)}\\n'.encode())",
    )
    assert events(out, "cp_worker_fork_failed", "cp_worker_started", "master") == ["cp_worker_fork_failed {}", "master 1"], out


def test_a_worker_that_raises_is_started_again_and_one_that_calls_sys_exit_ends_with_0(tmp_path: Path) -> None:
    """An exception out of the worker's work is an exit 1 (its traceback on stderr): a start
    that failed, started again; `sys.exit()` is 0, which ends the master. Run in a process of
    its own."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    if n == 0:",
        "        raise RuntimeError('a bug')",
        "    if n == 1:",
        "        sys.exit()",
        "    return 7",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "worker", "master", "cp_worker_failed") == [
        "worker 0",
        'cp_worker_failed {"delay_s": 0.1, "exit": 1, "failures": 1}',
        "worker 1",
        "master 0",
    ], out


def test_a_worker_that_exits_1_after_a_stop_ends_the_master_with_1(tmp_path: Path) -> None:
    """A worker that exits 1 once the master was told to stop (its start failed as it stopped)
    is not started again: the master ends with its 1. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    if n:",
        "        return 0",
        "    got = []",
        "    signal.signal(signal.SIGTERM, lambda *a: got.append(1))",
        "    os.kill(os.getppid(), signal.SIGTERM)",
        "    deadline = time.monotonic() + 20",
        "    while not got and time.monotonic() < deadline:",
        "        time.sleep(0.01)",
        "    return 1",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "worker", "master", "cp_worker_failed") == ["worker 0", "master 1"], out


def test_a_crash_loop_is_counted_against_restarts_max_within_the_window(tmp_path: Path) -> None:
    """With restarts_max 2, the first two deaths are restarted at once, the third waits 0.5 s
    and the fourth 1 s; each worker learns how many died before it and which one died last."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    last = info['last_death']",
        "    os.write(1, f\"OUT worker {n} {os.getpid()} {last and (last['pid'], last['signal'])}\\n\".encode())",
        "    if n < 4:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0",
        "os.write(1, f'OUT master {supervise.supervise(work, restarts_max=2)}\\n'.encode())",
    )
    got = events(out, "worker", "cp_worker_died", "cp_worker_crash_loop", "master")
    pids = [int(o.split()[2]) for o in got if o.startswith("worker ")]
    assert len(pids) == 5, out
    last = [None, *(f"({p}, 'SIGKILL')" for p in pids[:-1])]
    assert got == [
        f"worker 0 {pids[0]} {last[0]}",
        'cp_worker_died {"restarts": 1, "signal": "SIGKILL"}',
        f"worker 1 {pids[1]} {last[1]}",
        'cp_worker_died {"restarts": 2, "signal": "SIGKILL"}',
        f"worker 2 {pids[2]} {last[2]}",
        'cp_worker_crash_loop {"deaths": 3, "delay_s": 0.5, "restarts": 3, "signal": "SIGKILL"}',
        f"worker 3 {pids[3]} {last[3]}",
        'cp_worker_crash_loop {"deaths": 4, "delay_s": 1.0, "restarts": 4, "signal": "SIGKILL"}',
        f"worker 4 {pids[4]} {last[4]}",
        "master 0",
    ], out


def test_deaths_and_failures_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    """A death counts toward a crash loop only within `window`, and a failed start's wait grows
    only while no worker stayed up for a whole `window`: with a window of 0, three deaths with
    restarts_max 1 are each restarted at once, and three failed starts each wait the first 0.1 s."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    if n < 3:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0 if n == 6 else 1",
        "os.write(1, f'OUT master {supervise.supervise(work, restarts_max=1, window=0.0)}\\n'.encode())",
    )
    assert events(out, "cp_worker_died", "cp_worker_crash_loop", "cp_worker_failed", "master") == [
        'cp_worker_died {"restarts": 1, "signal": "SIGKILL"}',
        'cp_worker_died {"restarts": 2, "signal": "SIGKILL"}',
        'cp_worker_died {"restarts": 3, "signal": "SIGKILL"}',
        *['cp_worker_failed {"delay_s": 0.1, "exit": 1, "failures": 1}'] * 3,
        "master 0",
    ], out


def test_the_master_pings_the_watchdog_from_a_death_or_a_failed_start_to_the_next_fork(tmp_path: Path) -> None:
    """No worker pings systemd's watchdog between a worker's end and the next fork: the master
    pings at once (a whole interval for what comes next), through a wait, and again as the wait
    ends, just before the fork. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    if n < 2:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return 0 if n == 3 else 1",
        "os.write(1, f'OUT master {supervise.supervise(work, restarts_max=1)}\\n'.encode())",
    )
    got = [o for o in events(out, "worker", "tick", "cp_worker_died", "cp_worker_crash_loop", "cp_worker_failed", "master") if o != "tick False"]
    assert [o.split(" {")[0] for o in got] == [
        "worker 0",
        "tick True",  # the death
        "cp_worker_died",
        "worker 1",
        "tick True",  # the death
        "cp_worker_crash_loop",
        "tick True",  # the wait's end
        "worker 2",
        "tick True",  # the failed start
        "cp_worker_failed",
        "tick True",  # the wait's end
        "worker 3",
        "master 0",
    ], out


def test_a_stop_ends_a_wait_before_the_next_worker_at_once(tmp_path: Path) -> None:
    """A SIGTERM that comes while the master waits before the next worker (here 20 s after a
    failed start) ends the wait within its 0.05 s step: the master exits 0, no worker forked.
    Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        "supervise.FAIL_DELAY_FIRST_S = supervise.FAIL_DELAY_MAX_S = 20.0",
        "HOOKS['tick'] = lambda: os.kill(os.getpid(), signal.SIGTERM)  # (the first tick of the wait)",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n}\\n'.encode())",
        "    return 1",
        "began = time.monotonic()",
        "code = supervise.supervise(work)",
        "os.write(1, f'OUT master {code} {time.monotonic() - began < 10}\\n'.encode())",
    )
    assert events(out, "worker", "master") == ["worker 0", "master 0 True"], out


def test_a_reload_sent_twice_while_no_worker_runs_is_one_reload_for_the_next(tmp_path: Path) -> None:
    """Two SIGHUPs (and a SIGUSR1) that come while no worker runs (the wait after a failed
    start) are owed to the next worker once each, not reloaded twice. Run in a process of its own."""
    out = python_lines(
        *RECORDING,
        "def owe():",
        "    for s in (signal.SIGHUP, signal.SIGHUP, signal.SIGUSR1):",
        "        os.kill(os.getpid(), s)",
        "HOOKS['cp_worker_failed'] = owe",
        *numbered_work(tmp_path),
        "    os.write(1, f'OUT worker {n} {sorted(int(s) for s in supervise.EARLY_SIGNALS)}\\n'.encode())",
        "    return 1 if n == 0 else 0",
        "os.write(1, f'OUT master {supervise.supervise(work)}\\n'.encode())",
    )
    assert events(out, "worker", "master") == ["worker 0 []", f"worker 1 {sorted([int(signal.SIGHUP), int(signal.SIGUSR1)])}", "master 0"], out
