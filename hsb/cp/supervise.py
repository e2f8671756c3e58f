"""`hsbcpd --supervise`: a small master process that starts the CP again at once when it dies.

Most of a new hsbcpd's start is not the CP's own work: the interpreter, the imports and the
config check take about 0.4 s here, before the journal is even opened. The master does them
once, then forks the CP (the *worker*). When the worker dies of a signal (SIGKILL, the kernel's
OOM killer, a segfault) the master logs `cp_worker_died` and forks the next worker at once: it
recovers the journal as any restart does (hsb.cp.journal), without starting Python again. The
same idea as PostgreSQL's postmaster or nginx's master process.

- A worker that *exits* (a clean stop, a damaged journal, a newer CP generation, a config this
  machine cannot run, a port taken) ends the master with the same code: starting it again would
  not help, and systemd's `Restart=` and `RestartPreventExitStatus=` decide as they do without
  the master. But 1 at a start:
- A worker that exits 1 before it began to end (`mark_final`; a start that failed for a reason
  that may pass: the journal's storage not mounted or not answering, segments another CP still
  deletes) is started again by the master too, after FAIL_DELAY_FIRST_S, doubling at each such
  exit in a row up to FAIL_DELAY_MAX_S (`cp_worker_failed`, with the wait); a worker that stays up
  for RESTARTS_WINDOW_S clears it. It starts on the config as a worker forked after a death does
  (FORKED_AGAIN: the file read again, or what the workers before applied or checked), not on the
  master's start's: a SIGHUP the one that exited took is not lost with it, nor a wake (SIGUSR1,
  keepalived's) it was sent or owed: the next is woken too, as the takeover it asked for is not
  done. Ending the master with 1 left it to systemd, which started a
  new master (a new interpreter, ~0.4 s of CPU) every 100 ms for ever (Restart=always,
  StartLimitIntervalSec=0). A start that fails for a reason that lasts exits 73 (hsb.cp.main,
  LASTING_*), which ends the master like any other status.
- More than RESTARTS_MAX deaths within RESTARTS_WINDOW_S is a crash loop: each next worker
  waits, 0.5 s after the sixth death, doubling at every death up to DELAY_MAX_S, and the master
  says so (`cp_worker_crash_loop`, with the wait); a worker that stays up for a whole window
  clears it. (Giving up left it to systemd, whose `RestartSec` does not grow on Debian 12's
  systemd 252: a new master every 100 ms, five workers each, for ever.) A stop ends the wait.
- systemd's watchdog (`WatchdogSec`, `WATCHDOG_PID` naming the master) is pinged by the worker's
  loop while one runs, and by the master while none does: from a death to the next fork, the
  wait of a crash loop included (up to DELAY_MAX_S, longer than the unit's WatchdogSec=10:
  unpinged, systemd killed the master in the wait and started a new one, its crash loop
  forgotten, so the longer waits were never reached).
- The master holds nothing of the CP's: no journal, no connections, no threads (fork() is safe);
  only a shared mapping where each worker leaves the config it applied, or waiting checked
  (`AppliedConfig`), for the next worker if the config file is broken by then, and (with `takeover = "at_start"`) the
  terminal, host, admin and http listening sockets (`LISTENERS`): they stay open while a dead worker's
  descriptors are torn down and the next one starts, so the terminals and hosts that come back
  meanwhile wait in the accept queue instead of being refused, and the next worker serves them
  without waiting for the dead one's ports (0.1-0.2 s for 10,000 connections here).
  It passes SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 on to the worker; the worker dies with
  the master (PR_SET_PDEATHSIG), so a SIGKILL of the master is a crash of the CP as before.
- The worker learns how many workers died before it (`restarts`): `hsbctl status` and the
  metric `hsb_cp_worker_restarts` show it.

The master does not wait until the kernel has reaped a dead worker: closing 10,000 terminal
sockets takes the kernel 0.1-0.2 s here. The worker holds the write end of a pipe at its
highest possible descriptor, which Linux releases first when a process dies; the master sees
the pipe's end at once, reads how the worker ended from /proc (its exit code is set before its
descriptors are closed) and forks the next one while the old one is still being torn down.
Elsewhere the end comes with the reaping, as it would anyway.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import msgpack
import structlog

from hsb import cli, procstat
from hsb.backoff import doubling
from hsb.cli import EXIT_FAILED as FAILED  # a worker's exit that may pass: started again, after a wait
from hsb.ops.notify import Watchdog

log = structlog.get_logger("hsb.cp")

RESTARTS_MAX = 5  # deaths within RESTARTS_WINDOW_S restarted at once; past them, each waits (crash_loop_delay)
RESTARTS_WINDOW_S = 60.0
DELAY_FIRST_S, DELAY_MAX_S = 0.5, 30.0  # the wait before a worker in a crash loop, growing to this
FAIL_DELAY_FIRST_S, FAIL_DELAY_MAX_S = 0.1, 5.0  # the wait before a worker after such exits in a row, growing to this
PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
HIGH_FD_MAX = 1 << 20  # the pipe's end goes no higher (a larger fd table costs memory)


class Applied:
    """Bytes the last worker applied, kept where the next worker finds them: an anonymous mapping
    the master makes before its first fork and every worker inherits.

    Two slots, each a header (sequence number, length, CRC-32) and the data: a store writes the
    older slot, its data before its header, so a worker killed in the middle of a store leaves
    the other slot whole."""

    HEAD = struct.Struct("<QII")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.mem = mmap.mmap(-1, 2 * slot, flags=mmap.MAP_SHARED)  # pages are used only once written

    def _slot(self, i: int) -> tuple[int, bytes | None]:
        base = i * self.slot
        seq, n, crc = self.HEAD.unpack_from(self.mem, base)
        if not seq or not n or n > self.slot - self.HEAD.size:  # (n 0: a header half written)
            return 0, None
        data = self.mem[base + self.HEAD.size : base + self.HEAD.size + n]
        return (seq, data) if zlib.crc32(data) == crc else (0, None)

    def store_data(self, data: bytes) -> bool:
        """Kept for the next worker; False if too large for a slot."""
        if len(data) > self.slot - self.HEAD.size:
            return False
        (s0, _), (s1, _) = self._slot(0), self._slot(1)
        i = 0 if s0 <= s1 else 1
        base = i * self.slot
        self.HEAD.pack_into(self.mem, base, 0, 0, 0)  # invalid until its data is whole
        self.mem[base + self.HEAD.size : base + self.HEAD.size + len(data)] = data
        self.HEAD.pack_into(self.mem, base, max(s0, s1) + 1, len(data), zlib.crc32(data))
        return True

    def load_data(self) -> bytes | None:
        """The newest data stored; None if there is none."""
        return max((self._slot(0), self._slot(1)), key=lambda s: s[0])[1]


class AppliedConfig(Applied):
    """The config the last worker applied (at its start and at each SIGHUP). A worker forked
    again after its predecessor died reads the config file again; if the file is broken
    meanwhile, it takes this one, not the config of the master's start (which would lose the
    terminals added by SIGHUP since)."""

    SLOT = 16 * 1024 * 1024  # a config past this is not kept (logged): 100,000 terminals listed one by one fit

    def __init__(self) -> None:
        super().__init__(self.SLOT)

    def store(self, cfg: Any) -> None:
        data = msgpack.packb(cfg.model_dump(mode="json"))
        if not self.store_data(data):
            log.warning("applied_config_not_kept", bytes=len(data), msg="a worker started again would use the config file, or the start's")

    def load(self, model: type[Any]) -> Any | None:
        """The newest config stored, checked against `model` again; None if there is none."""
        data = self.load_data()
        if data is None:
            return None
        return model.model_validate(msgpack.unpackb(data), context={"base": Path.cwd()})


TLS_SLOT = 1024 * 1024  # certificate, key and CA files: a few KiB each


def keep_tls(pem: dict[str, bytes]) -> None:
    """The TLS files' bytes a worker loaded (at its start, at a SIGHUP), for the next worker:
    forked again after a crash while the files are broken (a renewal half done), it serves on
    these rather than exit (hsb.wire.tls.TLS, its `pem`). Nothing without a master."""
    if APPLIED_TLS is not None and not APPLIED_TLS.store_data(msgpack.packb(pem)):
        log.warning("applied_tls_not_kept", msg="a worker started again reads the certificate files only")


def applied_tls() -> dict[str, bytes] | None:
    """The TLS files' bytes the last worker loaded, if any."""
    data = APPLIED_TLS.load_data() if APPLIED_TLS is not None else None
    if data is None:
        return None
    pem = msgpack.unpackb(data)
    return pem if isinstance(pem, dict) else None


APPLIED: AppliedConfig | None = None  # made by the master (`supervise`), inherited by its workers
APPLIED_TLS: Applied | None = None  # the same for the TLS files' bytes (keep_tls)
# The terminal, host, admin and http listeners, when the master holds them (hsb.cp.listeners.master_listeners):
# made once, inherited by every worker, open across a worker's death.
LISTENERS: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """The worker gets SIGKILL when the master goes (Linux); if the master is already gone, now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the master died between fork() and prctl()
        os._exit(1)


def _flush() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):  # pragma: no cover - a closed stream
            pass


def _hold_high(fd: int) -> None:
    """Keep `fd` (the pipe's write end) at the highest descriptor this process may have."""
    global END_FD
    END_FD = fd
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(hard if hard != resource.RLIM_INFINITY else HIGH_FD_MAX, HIGH_FD_MAX)
    try:
        if soft < top:
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))  # the CP raises it at its start anyway
        os.dup2(fd, top - 1, inheritable=False)
        os.close(fd)
        END_FD = top - 1
    except (OSError, ValueError):  # a limit it cannot raise: the low descriptor still ends at the exit
        pass


def _exit_status(pid: int) -> int | None:
    """The wait status of `pid` if it is exiting or has exited (/proc/PID/stat), else None."""
    f = procstat.fields(pid)
    if f is None or len(f) <= procstat.EXIT_CODE or not (f[procstat.STATE] in "ZX" or int(f[procstat.FLAGS]) & procstat.PF_EXITING):
        return None
    return int(f[procstat.EXIT_CODE])


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:  # a real-time signal, say
        return f"signal {n}"


EARLY_SIGNALS: list[int] = []  # (this process's: the worker's, after the fork)
END_FD: int | None = None  # a worker's end of its pipe to the master (`mark_final`)
FORKED_AGAIN = False  # this worker is not the master's first (whatever the one before ended with)


def mark_final(code: int) -> None:
    """This worker has begun to end for good (a stop, superseded), meaning to exit with `code`:
    if it then dies of a signal (a crash, an OOM kill while it stops), the master forks no other
    (its listeners are shut down already, and a CP superseded must not come back and take the
    journal) and exits with `code` if it is not 0, so that systemd's RestartPreventExitStatus
    holds. Noted in the process too (hsb.cli.MEANT_EXIT: `ending_as_meant` and the exit watchdog
    end with it)."""
    cli.MEANT_EXIT = code
    if END_FD is None:
        return
    try:
        os.write(END_FD, bytes([code & 0xFF or 0xFF]))  # (0 is said as 255: a byte was written)
    except OSError:
        pass


def ending_as_meant(run: Callable[[], int]) -> int:
    """`run()`'s exit code; but once the CP began to end for good meaning a nonzero exit (75:
    superseded), that exit whatever its stop then fails with (EIO closing the journal on a mount
    in trouble, a bug): exiting 1, it was started again by systemd and took the journal back
    from the newer CP."""
    try:
        return run()
    except BaseException as exc:
        meant = cli.MEANT_EXIT
        if not meant or (isinstance(exc, SystemExit) and exc.code == meant):
            raise
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        _stop_failed(meant, f"{type(exc).__name__}: {exc}")
        return meant


def _stop_failed(meant: int, error: str, **kw: Any) -> None:
    log.error(
        "cp_stop_failed",
        exit=meant,
        error=error,
        msg=f"the CP failed while it stopped for good (the log above says why): exiting {meant} as it meant, not to be started again",
        **kw,
    )


def record_early_signals() -> None:
    """A reload (SIGHUP) or a wake (SIGUSR1) that comes while the worker starts, before its event
    loop has its own handlers (a recovery can take a second), is noted in EARLY_SIGNALS and acted
    on once the loop is up (hsb.cp.server), not lost."""

    def note(sig: int, _frame: Any) -> None:
        EARLY_SIGNALS.append(sig)

    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, note)


def worker_signals() -> None:
    """The forked worker's first act: the signals came blocked through fork(), and the master's
    handlers are replaced before any is delivered. A stop before the CP's own handlers are up
    ends it (SIG_DFL); a reload or a wake is noted (`record_early_signals`; never SIG_IGN first,
    which would discard one already pending: one the master passed on at once)."""
    record_early_signals()
    for sig in PASSED_ON:
        if sig not in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGUSR2 else signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _worker(work: Callable[[dict[str, Any]], int], info: dict[str, Any], parent: int, end: int) -> NoReturn:
    """The forked CP: run `work(info)` and leave with its code (never return into the master)."""
    global FORKED_AGAIN
    code = 1
    try:
        worker_signals()
        EARLY_SIGNALS.extend(info.pop("owed", []))  # (the master's, at the fork: noted as if they came now)
        FORKED_AGAIN = info.pop("forked_again", False)
        if os.environ.get("WATCHDOG_PID") == str(parent):
            # systemd's watchdog watches the master (the unit's main process), which runs no loop
            # to ping it from: the worker's tick loop pings for it (NotifyAccess=all); the master
            # pings only while no worker runs (supervise)
            os.environ["WATCHDOG_PID"] = str(os.getpid())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)
        _die_with_parent(parent)
        _hold_high(end)
        code = work(info)
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is None:
            code = 0
        else:
            sys.stderr.write(f"{exc.code}\n")
    except BaseException:
        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def crash_loop_delay(excess: int) -> float:
    """The wait before the next worker at the `excess`-th death past RESTARTS_MAX in a window."""
    return doubling(DELAY_FIRST_S, DELAY_MAX_S, excess - 1)


def failed_delay(failures: int) -> float:
    """The wait before the next worker after `failures` workers in a row exited FAILED."""
    return doubling(FAIL_DELAY_FIRST_S, FAIL_DELAY_MAX_S, failures - 1)


def supervise(work: Callable[[dict[str, Any]], int], *, restarts_max: int = RESTARTS_MAX, window: float = RESTARTS_WINDOW_S) -> int:
    """Fork `work` as the worker and keep one running; the exit code for the master."""
    global APPLIED, APPLIED_TLS
    APPLIED = AppliedConfig()
    APPLIED_TLS = Applied(TLS_SLOT)
    master = os.getpid()
    worker = 0
    stopping = False
    deaths: deque[float] = deque()
    failures = 0  # workers in a row that exited FAILED (none of them up for a whole window)
    dying: list[int] = []  # dead workers the kernel is still tearing down: reaped when they are gone
    owed: list[int] = []  # reloads and wakes that came while no worker ran: for the next one
    woken = False  # the worker running was woken (SIGUSR1 sent to it, or owed it at its fork)
    forked = False  # a worker was forked before: the next reads the config again (FORKED_AGAIN)

    def pass_on(sig: int, _: Any) -> None:
        nonlocal stopping, woken
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        if sig == signal.SIGUSR1 and worker:
            woken = True
        # a reload or a wake with no worker, or one dying (its teardown can take a while): for the next
        if sig in (signal.SIGHUP, signal.SIGUSR1) and sig not in owed and (not worker or _exit_status(worker) is not None):
            owed.append(sig)
        if worker:
            try:
                os.kill(worker, sig)
            except ProcessLookupError:
                pass

    def reap(block: bool) -> None:  # also from the SIGCHLD handler, in between: either may reap a pid first
        for pid in list(dying):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:  # reaped already
                done = pid
            if done and pid in dying:
                dying.remove(pid)

    for sig in PASSED_ON:
        signal.signal(sig, pass_on)
    # a reload or wake noted before these handlers (record_early_signals) is the first worker's
    # only: left in EARLY_SIGNALS, every worker forked after a crash would act on it again
    owed.extend(s for s in dict.fromkeys(EARLY_SIGNALS) if s not in owed)
    EARLY_SIGNALS.clear()
    signal.signal(signal.SIGCHLD, lambda *_: reap(block=False))  # a dead worker is reaped once torn down
    info: dict[str, Any] = {"master_pid": master, "restarts": 0, "last_death": None}
    # systemd's watchdog names the master: pinged by the worker while it runs (_worker), here while
    # no worker does (a dead one's, a crash loop's wait), each time just before the next fork too
    watchdog = Watchdog()

    def hold(delay: float) -> None:
        """Wait `delay` s before the next worker, pinging the watchdog; a stop ends the wait."""
        until = time.monotonic() + delay
        while not stopping and (left := until - time.monotonic()) > 0:
            watchdog.tick(time.monotonic())  # (every half WatchdogSec)
            time.sleep(min(left, 0.05))  # (a stop's signal ends the wait within this)
        watchdog.tick(time.monotonic(), force=True)

    # Everything the master built (the imports, the config) moves out of the collector's reach:
    # a worker's first full collection would otherwise walk, and so copy, every page it shares
    # with the master (copy-on-write), with its event loop stopped.
    gc.freeze()
    while True:
        _flush()  # nothing buffered is written twice, by both processes
        signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)  # none is lost between fork() and `worker`
        if stopping:
            reap(block=True)
            return 0
        try:
            r, w = os.pipe()
            # owed reloads and wakes go with the fork's copy of this memory: sent as signals after
            # it, one could come after the new worker had read its list (it then went unheeded)
            info["owed"] = list(owed)
            info["forked_again"] = forked  # (not in `info` as the worker keeps it: status shows that)
            pid = os.fork()
        except OSError as exc:
            log.error("cp_worker_fork_failed", error=str(exc), msg="cannot start the CP (memory? process limit?)")
            reap(block=True)
            return 1
        if pid == 0:
            os.close(r)
            _worker(work, info, master, w)
        os.close(w)
        worker = pid
        forked = True
        woken = signal.SIGUSR1 in owed
        owed.clear()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)
        log.info("cp_worker_started", pid=pid, master_pid=master, restarts=info["restarts"])
        began = time.monotonic()
        final: int | None = None  # the exit it meant, once it began to end for good (mark_final)
        while said := os.read(r, 1):  # its end is the worker's end (signals: PEP 475)
            final = said[0] if said[0] != 0xFF else 0
        os.close(r)
        worker = 0  # (a reload or wake from now on is owed to the next worker, not sent to a dead pid)
        status = _exit_status(pid)  # how it ended, read before the kernel has closed its sockets
        if status is not None and os.WIFSIGNALED(status):
            dying.append(pid)  # reaped once torn down (SIGCHLD; now if that came already)
            reap(block=False)
        else:  # an exit (or no word from /proc): not in a hurry, wait for it to be gone
            _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            reap(block=True)
            code = os.waitstatus_to_exitcode(status)
            if final and code != final:  # it failed while it ended for good: started again, it would take the journal back
                _stop_failed(final, f"exited {code}", pid=pid)
                return final
            if code != FAILED or final is not None or stopping:
                return code
            # a start that failed for a reason that may pass: again, after a wait that grows
            if woken and signal.SIGUSR1 not in owed:
                # keepalived's wake was for a takeover this worker did not finish (the storage
                # not answering): the next one is woken too, not left to wait out takeover_stale
                owed.append(signal.SIGUSR1)
            now = time.monotonic()
            failures = 1 if now - began >= window else failures + 1
            delay = failed_delay(failures)
            watchdog.tick(now, force=True)
            log.error(
                "cp_worker_failed",
                pid=pid,
                exit=code,
                failures=failures,
                delay_s=delay,
                msg=f"the CP exited {code} ({failures} in a row; the log above says why): starting it again in {delay:g} s",
            )
            hold(delay)
            continue
        if final:  # killed while it ended for good, meaning this exit: no other worker
            reap(block=True)
            log.warning(
                "cp_worker_died_ending",
                pid=pid,
                signal=_signal_name(os.WTERMSIG(status)),
                exit=final,
                msg="the CP died while it ended: exiting as it meant to",
            )
            return final
        if stopping or final is not None:  # killed while stopping: by the stop itself (before its handlers were up) is a stop
            reap(block=True)
            killed_by = os.WTERMSIG(status)
            if killed_by in (signal.SIGTERM, signal.SIGINT):
                return 0
            log.warning(
                "cp_worker_died_stopping",
                pid=pid,
                signal=_signal_name(killed_by),
                msg="the CP crashed while it stopped: recovered from its journal at the next start",
            )
            return 128 + killed_by
        name = _signal_name(os.WTERMSIG(status))
        now = time.monotonic()
        deaths.append(now)
        while deaths and deaths[0] < now - window:
            deaths.popleft()
        info = {"master_pid": master, "restarts": info["restarts"] + 1, "last_death": {"pid": pid, "signal": name, "at": time.time()}}
        watchdog.tick(now, force=True)  # no worker pings now: the next one starts with a whole interval
        if len(deaths) > restarts_max:
            delay = crash_loop_delay(len(deaths) - restarts_max)
            log.error(
                "cp_worker_crash_loop",
                pid=pid,
                signal=name,
                deaths=len(deaths),
                window_s=window,
                delay_s=delay,
                restarts=info["restarts"],
                msg=f"the CP died {len(deaths)} times within {window:g} s: starting it again in {delay:g} s (see the log above for why it dies)",
            )
            hold(delay)
            continue
        log.warning(
            "cp_worker_died",
            pid=pid,
            signal=name,
            restarts=info["restarts"],
            msg="the CP died: starting it again at once on its journal",
        )
