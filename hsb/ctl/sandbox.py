"""`hsbctl sandbox up|down|start-host|start-cp`: a complete system on loopback for trying it
out, for tests, benchmarks and the demo; this module owns its processes.

`up` has the sandbox's files made (hsb.ctl.sandbox_files: secret, configs with free ports, a
takeover file sized for the terminals, the state file), starts hsbcpd, host A as active and
host B as standby (each in its own session, logs in DIR), waits for hot standby, and prints one
JSON object. `up` in the folder of an earlier sandbox starts a new one (new takeover file, CP
journal and ledger); it refuses any other folder that is not empty. `down` stops what `up` (and
`start-host`, `start-cp`) started and removes nothing; it signals only processes that are still
this sandbox's (a recorded pid now used by another program is left alone). The daemons run as
separate processes, outliving `hsbctl sandbox up`; a bench's die with it, however it dies
(`die_with_this_process`). hsbctl talks to them only over their admin links. What the files module
holds is used through this one too (`sandbox.load_state`, `sandbox.write_configs`, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsb import procstat
from hsb.ctl.gather import ask, status_all
from hsb.ctl.sandbox_files import (
    HOSTS,
    STATE,
    SandboxError,
    check_folder,
    client_ssl,
    describe,
    lease_for,
    load_state,
    new_state,
    prepare,
    process,
    records_for,
    save_state,
    write_configs,
)
from hsb.service.api import BUILTIN_NAMES, service_problem
from hsb.wire.auth import load_secret

__all__ = [  # (the files' part, hsb.ctl.sandbox_files, is used through this module too)
    "HOSTS",
    "STATE",
    "SandboxError",
    "actives",
    "aup",
    "check_folder",
    "client_ssl",
    "cp_process",
    "describe",
    "die_with_this_process",
    "dies_with",
    "down",
    "lease_for",
    "load_state",
    "records_for",
    "save_state",
    "start_cp",
    "start_host",
    "status",
    "until",
    "up",
    "wait_established",
    "wait_started",
    "write_configs",
]


PR_SET_PDEATHSIG = 1
_TIED = False  # die_with_this_process()


def die_with_this_process() -> None:
    """From now on each daemon this process starts gets SIGKILL when this process ends, however it
    ends: a bench's (bench/_entry.py run_or_render). A bench killed by SIGKILL runs no teardown,
    and its daemons, in sessions of their own, ran on (`down` finds them by their command line,
    but nothing runs it after a bench). Never for `hsbctl sandbox up`, whose daemons outlive
    it. Linux ties the signal to the thread that forks: they are started from the main thread."""
    global _TIED
    _TIED = True


def dies_with(parent: int) -> Callable[[], None]:
    """A child's preexec_fn: SIGKILL when `parent` (the thread that forks it) ends
    (PR_SET_PDEATHSIG); if `parent` ended already, between the fork and this, it exits at once
    (the signal would never come)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # (looked up before the fork)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        prctl = None

    def tie() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return tie


def _spawn(d: Path, name: str, argv: list[str]) -> int:
    tie = None
    if _TIED:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(f"{name}: a daemon that dies with this process is started from its main thread (another thread's end would kill it)")
        tie = dies_with(os.getpid())
    log = open(d / f"{name}.log", "ab")  # noqa: SIM115 - the child's log, closed by its owner
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=d, preexec_fn=tie)
    log.close()
    return p.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return procstat.state(pid) not in ("Z", None)  # a zombie child of this process is not alive


def _ours(d: Path, pid: int) -> bool:
    """Whether `pid` runs and is still a daemon of the sandbox in `d`: its command line names a
    config in `d` (a CP worker forked by its master has its master's). A pid recorded long ago
    may belong to another program now (after a reboot, say): that one is never signalled."""
    if not pid or not _alive(pid):
        return False
    try:
        return _names_config(d, Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _names_config(d: Path, cmdline: bytes) -> bool:
    """The command line is a daemon's (`-m hsb.cp` or `-m hsb.host`, as the sandbox starts
    them) whose `--config` is a file directly in `d`: not any program that names a file there
    (an editor on cp.toml, `hsbctl -c ctl.toml status --watch`), nor a sandbox nested in it."""
    where = str(d.resolve()).encode() + b"/"
    args = cmdline.split(b"\0")
    pairs = list(zip(args, args[1:], strict=False))
    daemon = any(a == b"-m" and b in (b"hsb.cp", b"hsb.host") for a, b in pairs)
    return daemon and any(a == b"--config" and b.startswith(where) and b"/" not in b[len(where) :] and b.endswith(b".toml") for a, b in pairs)


def found(d: Path) -> list[int]:
    """The sandbox's daemons found by their command line (`_names_config`), recorded or not: one
    started by an `up` killed before its state file named it (SIGKILL, SIGTERM) runs on, in a
    session of its own, holding the sandbox's ports."""
    me = os.getpid()
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != me and _ours(d, int(p.name)):
            out.append(int(p.name))
    return sorted(out)


def _stranger(d: Path, pid: int) -> bool:
    """`pid` runs another program now (a pid recorded before a reboot, say), not this sandbox's
    daemon: its command line is there to read and names no config in `d`. (One of ours that is
    exiting has an empty one by then: not a stranger, and waited for.)"""
    f = procstat.fields(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if f is not None and int(f[procstat.FLAGS]) & procstat.PF_KTHREAD:  # (none has a command line): not ours
        return True
    return bool(argv.strip(b"\0")) and not _names_config(d, argv)


def _running(pid: int, grace: float = 3.0) -> bool:
    """Whether `pid` still runs after up to `grace` seconds. A process just sent SIGKILL closes its
    sockets (so the pair already failed over) a moment before it is gone: wait that moment out."""
    deadline = time.monotonic() + grace
    while _alive(pid):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)
    return False


def _spawn_env(d: Path, name: str, argv: list[str], env_extra: dict[str, str] | None) -> int:
    if not env_extra:
        return _spawn(d, name, argv)
    old = dict(os.environ)
    os.environ.update(env_extra)
    try:
        return _spawn(d, name, argv)
    finally:
        os.environ.clear()
        os.environ.update(old)


def cp_process(st: dict[str, Any]) -> int:
    """The pid of the process that is the CP: hsbcpd, or under `--supervise` its master's
    worker (the master's pid while it has none)."""
    pid = int(st["cp"]["pid"])
    if not st["cp"].get("supervise"):
        return pid
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if _alive(int(k))]
    except OSError:
        kids = []
    return kids[-1] if kids else pid  # the newest: a dead one may still be torn down


def start_cp(d: Path, env_extra: dict[str, str] | None = None) -> int:
    """(Re)start the sandbox's hsbcpd on the same config, ports and journal; returns its pid."""
    st = load_state(d)
    cp = process(d, st, "hsbcpd")
    if not _stranger(d, cp["pid"]) and _running(cp["pid"]):
        raise SandboxError(f"hsbcpd is still running (pid {cp['pid']}); stop it first")
    argv = [sys.executable, "-m", "hsb.cp", "--config", cp["config"], *(["--supervise"] if cp.get("supervise") else [])]
    pid = _spawn_env(d, "cp", argv, env_extra)
    cp["pid"] = pid
    cp.setdefault("pids", []).append(pid)
    save_state(d, st)
    return pid


def start_host(d: Path, name: str, role: str, env_extra: dict[str, str] | None = None) -> int:
    """(Re)start one host of the sandbox with `role`; returns its pid."""
    st = load_state(d)
    h = process(d, st, name)
    if not _stranger(d, h["pid"]) and _running(h["pid"]):
        raise SandboxError(f"{name} is still running (pid {h['pid']}); stop it first")
    argv = [sys.executable, "-m", "hsb.host", "--role", role, "--config", h["config"]]
    pid = _spawn_env(d, name, argv, env_extra)
    h["pid"] = pid
    h["role"] = role
    h.setdefault("pids", []).append(pid)
    save_state(d, st)
    return pid


def _exit_code(pid: int) -> int | None:
    """The exit status of `pid` if it is this process's child and has ended (reaped here), else
    None (still running, or not our child: its end is seen by `_alive`)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def _is_child(pid: int) -> bool:
    """`pid` is still a child of this process not yet reaped (its status will come)."""
    f = procstat.fields(pid)
    return f is not None and f[procstat.PPID] == str(os.getpid())


def _exited(d: Path, name: str, pid: int) -> SandboxError | None:
    """`name` (pid) has ended: the error that says how, with its log's last lines; else None."""
    code = _exit_code(pid)
    if code is None:
        if _alive(pid):
            return None
        # it ended between the two looks: its status is there once the kernel has made it a
        # zombie, a moment after /proc stops showing it alive (it was read too soon: "exited")
        deadline = time.monotonic() + 2.0
        while (code := _exit_code(pid)) is None and time.monotonic() < deadline and _is_child(pid):
            time.sleep(0.01)
    log = d / f"{'cp' if name == 'hsbcpd' else name}.log"
    try:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    except OSError:
        tail = "(no log)"
    how = f"exited with code {code}" if code is not None else "exited"
    return SandboxError(f"{name} (pid {pid}) {how} at start; log {log} ends:\n{tail}")


async def wait_started(d: Path, name: str, pid: int, timeout: float = 30.0) -> dict[str, Any]:
    """After `start_host`/`start_cp`: wait until the daemon answers its admin port in its role (a
    host past `starting` and registered at the CP), and return its status. A daemon that exits first
    (a host refused as active: 76; a bad config: 78) or is fenced meanwhile is a SandboxError
    naming its exit code and its log, so that `hsbctl sandbox start-host` does not say it started."""
    st = load_state(d)
    admin = process(d, st, name)["admin"]
    secret = load_secret(str(d / "secret"))
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        gone = _exited(d, name, pid)
        if gone is not None:
            raise gone
        last = await ask(admin, secret, {"t": "status"}, 1.0, ssl=client_ssl(d))
        data: dict[str, Any] | None = last["data"] if isinstance(last.get("data"), dict) else None
        if data is not None:
            state = data.get("state")
            if state == "fenced":
                raise SandboxError(
                    f"{name} (pid {pid}) started but is fenced ({data.get('last_error') or 'another host is active'}); start it as standby"
                )
            # (a host past `starting` need not be registered: a standby follows its peer with its
            # CP link refused, say the CP's certificate expired; README: it waits until registered)
            if name == "hsbcpd" or (state != "starting" and data.get("registered_at_cp", True) is not False):
                return data
        if time.monotonic() > deadline:
            why = (data or {}).get("last_error") or last.get("error") or (data or {}).get("state")
            raise SandboxError(f"{name} (pid {pid}) did not start within {timeout:.0f}s ({why}); see {d}/{'cp' if name == 'hsbcpd' else name}.log")
        await asyncio.sleep(0.1)


async def wait_established(d: Path, timeout: float) -> dict[str, Any]:
    st = load_state(d)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        for name, h in [("hsbcpd", st["cp"]), *st["hosts"].items()]:
            if not _alive(h["pid"]):
                tail = (d / f"{name if name != 'hsbcpd' else 'cp'}.log").read_text(errors="replace")[-1500:]
                raise SandboxError(f"{name} (pid {h['pid']}) exited; log {d}/{name if name != 'hsbcpd' else 'cp'}.log ends:\n{tail}")
        last = await status_all(st["cp"]["admin"], [st["hosts"][n]["admin"] for n in HOSTS], str(d / "secret"), timeout=1.0, ssl=client_ssl(d))
        if last["established"]:
            return last
        if time.monotonic() > deadline:
            hosts = ", ".join(
                f"{h['name']}: {h.get('role')}/{h.get('state')} {h.get('last_error') or h.get('error') or ''}".strip() for h in last["hosts"]
            )
            raise SandboxError(f"hot standby not established within {timeout:.0f}s ({hosts}); logs: {d}/cp.log {d}/host-a.log {d}/host-b.log")
        await asyncio.sleep(0.1)


def up(d: Path, **kw: Any) -> dict[str, Any]:
    return asyncio.run(aup(d, **kw))


async def aup(
    d: Path,
    *,
    terminals: int = 200,
    service: str = "echo",
    conventional: bool = False,
    timeout: float = 60.0,
    logon_ms: float = 0,
    host_timeout: float = 0.5,
    host_env: dict[str, dict[str, str]] | None = None,
    cp_env: dict[str, str] | None = None,
    durability: str = "fsync",
    journal_segment_kib: int = 1024,
    host_options: dict[str, Any] | None = None,
    dsn: str | None = None,
    service_options: dict[str, Any] | None = None,
    tls: bool = False,
    cp_options: dict[str, Any] | None = None,
    supervise: bool = False,
) -> dict[str, Any]:
    """Start the sandbox in `d` and wait for hot standby (see module docstring); `supervise`:
    hsbcpd under its master process (`hsbcpd --supervise`), restarted at once if it dies."""
    d = d.resolve()
    check_folder(d)
    if service not in BUILTIN_NAMES:  # (one's own: said now, not as a host that never started)
        if problem := service_problem(service, "host-a", service_options or {}):
            raise SandboxError(problem)
    if (d / STATE).exists():
        old = load_state(d)
        if any(_ours(d, p["pid"]) for p in [old["cp"], *old["hosts"].values()]):
            raise SandboxError(f"a sandbox is already running in {d}; 'hsbctl sandbox down --dir {d}' first")
    # not in the state file (an earlier up cut short); one a down just killed is given its moment
    if stray := [p for p in found(d) if _running(p, 1.0)]:
        raise SandboxError(f"daemons of a sandbox in {d} are running (pids {', '.join(map(str, stray))}); 'hsbctl sandbox down --dir {d}' first")
    plan = prepare(
        d,
        terminals=terminals,
        service=service,
        conventional=conventional,
        logon_ms=logon_ms,
        host_timeout=host_timeout,
        durability=durability,
        journal_segment_kib=journal_segment_kib,
        host_options=host_options,
        dsn=dsn,
        service_options=service_options,
        tls=tls,
        cp_options=cp_options,
    )
    cp_argv = [sys.executable, "-m", "hsb.cp", "--config", str(d / "cp.toml"), *(["--supervise"] if supervise else [])]
    cp_pid = _spawn_env(d, "cp", cp_argv, cp_env)
    try:
        return await _started(d, cp_pid, plan, service, conventional, terminals, dsn, supervise, host_env, timeout)
    except BaseException:
        try:
            down(d)  # (its state file may not be written yet: then the CP alone is stopped here)
        except SandboxError:
            pass
        if _ours(d, cp_pid):
            os.kill(cp_pid, signal.SIGKILL)
        raise


async def _started(
    d: Path,
    cp_pid: int,
    plan: dict[str, Any],
    service: str,
    conventional: bool,
    terminals: int,
    dsn: str | None,
    supervise: bool,
    host_env: dict[str, dict[str, str]] | None,
    timeout: float,
) -> dict[str, Any]:
    """`aup` once hsbcpd was started: the state file, both hosts, and the wait for hot standby."""
    st = new_state(d, cp_pid, plan, service=service, conventional=conventional, terminals=terminals, dsn=dsn, supervise=supervise)
    save_state(d, st)
    _wait_port(st["cp"]["host"], 15.0, d, cp_pid)
    start_host(d, "host-a", "active", (host_env or {}).get("host-a"))
    start_host(d, "host-b", "standby", (host_env or {}).get("host-b"))
    await wait_established(d, timeout)
    return describe(d)


async def status(d: Path, timeout: float = 2.0) -> dict[str, Any]:
    """The combined status of the sandbox in `d` (see hsb.ctl.gather)."""
    st = load_state(d)
    return await status_all(st["cp"]["admin"], [h["admin"] for h in st["hosts"].values()], str(d / "secret"), timeout=timeout, ssl=client_ssl(d))


async def until(d: Path, pred: Any, timeout: float, what: str, every: float = 0.05) -> dict[str, Any]:
    """Poll the sandbox's status until `pred(status)` holds; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        s = await status(d)
        if pred(s):
            return s
        if time.monotonic() > deadline:
            brief = [(h.get("name"), h.get("role"), h.get("state")) for h in s["hosts"]]
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; hosts {brief}")
        await asyncio.sleep(every)


def actives(s: dict[str, Any]) -> list[str]:
    """Names of the reachable hosts that report the active role."""
    return [h["name"] for h in s["hosts"] if h.get("reachable") and h.get("role") == "active"]


def _wait_port(addr: str, timeout: float, d: Path, pid: int = 0) -> None:
    """Until hsbcpd listens at `addr` (its host_listen). A sandbox with TLS makes the TLS
    handshake there with hsbctl's certificate before it closes: a TCP connect alone was a
    plaintext client at a TLS port, logged as `tls_refused` and counted at every start."""
    h, _, p = addr.rpartition(":")
    deadline = time.monotonic() + timeout
    ctx = client_ssl(d)
    while True:
        try:
            with socket.create_connection((h, int(p)), 0.5) as sock:
                if ctx is not None:
                    sock.settimeout(max(0.5, deadline - time.monotonic()))
                    with contextlib.suppress(ssl.SSLError), ctx.wrap_socket(sock):
                        pass  # (handshake done: closed; a refused one is the hosts' to say)
                return
        except OSError:
            if pid and not _alive(pid):
                tail = (d / "cp.log").read_text(errors="replace")[-1500:]
                raise SandboxError(f"hsbcpd (pid {pid}) exited at start; log {d}/cp.log ends:\n{tail}") from None
            if time.monotonic() > deadline:
                raise SandboxError(f"hsbcpd did not listen on {addr} within {timeout:.0f}s; see {d}/cp.log") from None
            time.sleep(0.05)


def _stop_order(d: Path, st: dict[str, Any]) -> list[list[int]]:
    """The sandbox's pids in the order `down(ordered=True)` stops them: the hosts that are not
    the active (asked over their admin links; one that does not answer is taken for a standby),
    the active, the CP."""
    try:
        roles = {h.get("name"): h.get("role") for h in asyncio.run(status(d, timeout=1.0))["hosts"] if h.get("reachable")}
    except Exception:  # noqa: BLE001 - (the daemons' status unreadable: stopped in the plain order, all at once)
        return []

    hosts = st["hosts"]
    return [
        [p for n, h in hosts.items() if roles.get(n) != "active" for p in _pids(h)],
        [p for n, h in hosts.items() if roles.get(n) == "active" for p in _pids(h)],
        _pids(st["cp"]),
    ]


def _pids(proc: dict[str, Any]) -> list[int]:
    """A daemon's pids in the state file (its master and worker under --supervise)."""
    return [p for p in proc.get("pids", [proc["pid"]]) if p]


def down(d: Path, timeout: float = 5.0, ordered: bool = False) -> list[int]:
    """Stop the sandbox's daemons (SIGTERM, SIGKILL after `timeout`); the pids signalled: those
    its state file records and those found by their command line (`found`: an `up` killed before
    it wrote the state file). Only a process that is still the sandbox's (`_ours`) is signalled,
    each time. `ordered` (hsbctl sandbox down): in the order an operator stops a pair, each gone
    before the next is told: the standby, then the active (with no standby, it has nothing to
    hand over), then the CP. All at once, the active would begin a handover to a standby that is
    itself stopping while the CP goes, and log that as failures."""
    d = d.resolve()
    stray = found(d)
    st: dict[str, Any] | None = None
    if not stray or (d / STATE).exists():
        st = load_state(d)
        pids = [p for proc in [st["cp"], *st["hosts"].values()] for p in _pids(proc)]
    else:  # no state file yet: the first up in this folder was cut short
        pids = []
    live = [p for p in dict.fromkeys([*pids, *stray]) if _ours(d, p)]

    def signal_all(sig: int, which: list[int] | None = None) -> None:
        for p in live if which is None else which:
            if _ours(d, p):
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):  # gone, or not ours after all
                    pass

    deadline = time.monotonic() + timeout
    for group in _stop_order(d, st) if ordered and st is not None else []:
        group = [p for p in group if p in live]
        signal_all(signal.SIGTERM, group)
        while any(_ours(d, p) for p in group) and time.monotonic() < deadline:
            time.sleep(0.05)
    signal_all(signal.SIGTERM)
    while any(_ours(d, p) for p in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
    return live
