"""What an operator meets on day one (issue 15): one set of config checks for --check-config and
the start, hsbctl saying what it knows (exit 3 when it cannot ask), versions everywhere, the
role-change hook, pause and resume, the history, and the README's commands. Real processes."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hsb import JOURNAL_FORMAT, LINK_PROTOCOL, TAKEOVER_FORMAT, __version__
from hsb.ctl import sandbox
from tests.support.procs import log_events, until
from tests.support.sandboxed import active_names, pid_of, status, wait_status

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def ctl(info: dict[str, Any], *args: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run("hsb.ctl", *info["ctl"], *extra, *args, timeout=90)


# --------------------------------------------------------------------------- one set of checks


def _host_config(tmp: Path, **over: Any) -> Path:
    from hsb.ctl.sandbox import write_configs

    write_configs(tmp, terminals=201, service="echo", conventional=False)
    p = tmp / "host-a.toml"
    text = p.read_text()
    for key, value in over.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("service", '"ecko"', "host.service: service 'ecko' must be"),
        ("service", '"nosuch.mod:factory"', "cannot import nosuch.mod"),
        ("records", "20", "N must be at least 43"),
    ],
)
def test_check_config_refuses_what_the_start_refuses(tmp_path: Path, key: str, value: str, says: str) -> None:
    cfg = _host_config(tmp_path, **{key: value})
    check = run("hsb.host", "--config", str(cfg), "--check-config")
    start = run("hsb.host", "--role", "active", "--config", str(cfg))
    assert check.returncode == 78 and says in check.stderr, check.stderr
    assert start.returncode == 78 and says in start.stderr, start.stderr  # the same words, the same code


def test_a_good_config_checks_ok_and_a_bad_cp_config_exits_78(tmp_path: Path) -> None:
    cfg = _host_config(tmp_path)
    r = run("hsb.host", "--config", str(cfg), "--check-config")
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr
    cp = tmp_path / "cp.toml"
    cp.write_text(cp.read_text().replace("held_bound = 256", "held_bound = 0"))
    for args in (("--check-config",), ()):
        r = run("hsb.cp", "--config", str(cp), *args)
        assert r.returncode == 78 and "cp.held_bound" in r.stderr, r.stderr


def test_the_units_stop_a_restart_loop_on_a_config_error() -> None:
    for unit in ("hsbcpd.service", "hsbd@.service"):
        text = (ROOT / "configs" / "systemd" / unit).read_text()
        assert re.search(r"^RestartPreventExitStatus=.*\b78\b", text, re.M), unit
        # the start runs the checks itself: an ExecStartPre check that fails is restarted all the
        # same (RestartPreventExitStatus is for the main process only), and costs every restart
        assert not re.search(r"^ExecStartPre=", text, re.M), unit
        for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes", "WatchdogSec="):
            assert hardening in text, (unit, hardening)
        # the stop's SIGTERM to the main process alone: hsbd gives a role-change hook still running
        # hook_timeout (docs/operations.md §9); hsbcpd's master passes it on to its worker
        # (tests/test_cp_supervise.py, test_sigterm_to_the_master_stops_the_cp_cleanly)
        assert re.search(r"^KillMode=mixed$", text, re.M), unit
    cp = (ROOT / "configs" / "systemd" / "hsbcpd.service").read_text()
    # a start that cannot succeed here (73: a port taken, the journal's permissions) ends failed,
    # not restarted every 100 ms for ever (no start limit)
    assert re.search(r"^RestartPreventExitStatus=.*\b73\b", cp, re.M) and re.search(r"^StartLimitIntervalSec=0$", cp, re.M)
    # the CP under its master: a crash is forked again at once; the worker's notifications count
    assert re.search(r"^ExecStart=.*hsbcpd .*--supervise", cp, re.M) and re.search(r"^NotifyAccess=all$", cp, re.M)


def test_hsbctl_stop_waits_as_long_as_the_unit_lets_a_stop_take() -> None:
    """hsbctl stop waited 40 s by default, the unit's TimeoutStopSec is 60 (a handover, then a
    normal stop, ~34 s, + 2 x hook_timeout: 54 s), and hsbd's admin port closes only after the
    role hook's last run: a stop that was proceeding was said not to have stopped, exit 1."""
    from hsb.ctl.main import main

    text = (ROOT / "configs" / "systemd" / "hsbd@.service").read_text()
    m = re.search(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert m is not None
    (opt,) = [p for p in main.commands["stop"].params if p.name == "timeout"]
    assert isinstance(opt.default, float) and opt.default >= int(m.group(1)), (opt.default, m.group(0))
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `hsbctl … stop "))
    assert f"(default {opt.default:g}" in row, row


def test_the_units_do_not_restart_an_exit_no_restart_can_change() -> None:
    """Each status a daemon exits with when a start again would end the same way (hsb.cli.NOT_RESTARTED)
    is in its unit's RestartPreventExitStatus, and only those: a usage error (2) was not, and
    hsbcpd.service (Restart=always, RestartSec=100ms, no start limit) started `hsbcpd --log-level
    verbose` (click's usage error, a drop-in's ExecStart) every 100 ms for ever; hsbd@.service
    until its start limit. The units' 2 is the status the daemons really give a usage error."""
    from hsb.cli import EXIT_USAGE, NOT_RESTARTED
    from hsb.cp.server import EXIT_SUPERSEDED

    for daemon, unit in (("hsbcpd", "hsbcpd.service"), ("hsbd", "hsbd@.service")):
        text = (ROOT / "configs" / "systemd" / unit).read_text()
        prevented = {int(w) for line in re.findall(r"^RestartPreventExitStatus=(.*)$", text, re.M) for w in line.split() if w.isdigit()}
        assert prevented == set(NOT_RESTARTED[daemon]), (unit, sorted(prevented), NOT_RESTARTED[daemon])
        assert EXIT_USAGE in prevented, unit
    assert EXIT_SUPERSEDED in NOT_RESTARTED["hsbcpd"]
    for argv in (
        ("hsb.cp", "--config", "cp.toml", "--log-level", "verbose"),
        ("hsb.host", "--role", "active", "--config", "host.toml", "--log-level", "verbose"),
    ):
        r = run(*argv)
        assert r.returncode == EXIT_USAGE and "Usage:" in r.stderr, (argv, r.returncode, r.stderr[-500:])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found (Debian's systemd package)")
@pytest.mark.parametrize("unit", ["hsbcpd.service", "hsbd@.service"])
def test_the_units_are_rated_ok_or_medium_by_systemd_analyze(tmp_path: Path, unit: str) -> None:
    src = ROOT / "configs" / "systemd" / unit
    copy = tmp_path / unit.replace("@.", "@x.")  # an instance of the template
    copy.write_text(src.read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(copy)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m is not None, r.stdout + r.stderr
    assert m.group(2) in ("OK", "MEDIUM") and float(m.group(1)) <= 6.9, m.group(0)


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    "argv",
    [
        ("hsb.host",),
        ("hsb.cp",),
        ("hsb.ctl",),
        ("hsb.term",),
        ("hsb.ctl", "status"),
        ("hsb.ctl", "stop"),
        ("hsb.ctl", "history"),
        ("hsb.ctl", "file", "inspect"),
        ("hsb.ctl", "sandbox", "up"),
        ("hsb.term", "load"),
        ("hsb.term", "connect"),
    ],
)
def test_every_command_answers_version(argv: tuple[str, ...]) -> None:
    """Each names the version, the link protocol and the on-disk formats: what tells an operator
    whether a rollback reads the files the newer build wrote."""
    r = run(*argv, "--version")
    assert r.returncode == 0 and __version__ in r.stdout, (argv, r.stdout, r.stderr)
    formats = f"(link protocol {LINK_PROTOCOL}, takeover file format {TAKEOVER_FORMAT}, CP journal format {JOURNAL_FORMAT})"
    assert r.stdout.strip().endswith(formats), (argv, r.stdout)


# --------------------------------------------------------------------------- a live sandbox


async def test_hsbctl_says_what_it_knows(sb: Any, tmp_path: Path) -> None:
    info = await sb(terminals=10)
    r = ctl(info, "status")
    assert r.returncode == 0, r.stdout + r.stderr
    # a wrong secret: not "NOT SERVING" (it serves), but unknown, naming who and why
    wrong = tmp_path / "wrong"
    wrong.write_text("not the secret\n")
    wrong.chmod(0o600)
    r = ctl(info, "status", extra=("--secret-file", str(wrong)))
    assert r.returncode == 3, r.stdout
    assert "UNKNOWN" in r.stdout and "authentication failed: the secret differs" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    r = ctl(info, "switchover", "--yes", extra=("--secret-file", str(wrong)))
    assert r.returncode == 3 and "cannot ask" in r.stderr and "no established standby" not in r.stderr, r.stderr
    # a host that is down: named, with its address, the reason and the fix
    os.kill(pid_of(info, "host-b"), signal.SIGKILL)
    await until(lambda: not sandbox._alive(pid_of(info, "host-b")), 10, what="host-b gone")
    # (once the CP dropped its link: it holds no role there, so it is down and the verdict stands)
    said: list[Any] = []

    def asked() -> bool:
        said.append(ctl(info, "status"))
        return bool(said[-1].returncode == 1)

    await until(asked, 10, what="SERVING WITHOUT A STANDBY")
    r = said[-1]
    addr_b = next(h["admin"] for h in info["hosts"] if h["name"] == "host-b")
    assert r.stdout.startswith("hsb: SERVING WITHOUT A STANDBY\n"), r.stdout
    assert f"host-b at {addr_b}: connection refused" in r.stdout and "is the daemon running" in r.stdout and "counted as down" in r.stdout, r.stdout
    # a wrong port: an answer that is not a bare TimeoutError
    import socket

    with socket.socket() as unused:  # a port bound here and not listening: nothing answers there
        unused.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{unused.getsockname()[1]}"
        r = run("hsb.ctl", "--cp", nowhere, "--secret-file", str(Path(info["secret_file"])), "status")
    assert r.returncode == 3 and f"CP at {nowhere}" in r.stdout and "Error" not in r.stdout.split("\n")[0], r.stdout


async def _sandbox_with_hook(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A sandbox whose hosts' role-change hook appends its arguments to a file: (dir, file, info)."""
    d = tmp_path / "sb"
    calls = tmp_path / "calls.txt"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    hook.chmod(0o755)
    info = await sandbox.aup(d, terminals=10, host_options={"on_role_change": str(hook)}, timeout=60)
    return d, calls, info


async def test_role_change_hook_runs_with_the_right_arguments(tmp_path: Path) -> None:
    d, calls, info = await _sandbox_with_hook(tmp_path)

    def lines() -> list[list[str]]:
        return [x.split(" ", 3) for x in calls.read_text().splitlines()] if calls.exists() else []

    try:
        # the roles the hosts started in, once each holds it: a VIP script takes the address at a cold start
        await until(lambda: {x[0] for x in lines()} == {"active", "standby"}, 10, what="the hooks of the roles started in")
        first = lines()
        assert len(first) == 2, first
        started_active = next(x for x in first if x[0] == "active")
        assert int(started_active[2]) >= 1 and "registered with the CP" in started_active[3], started_active
        os.kill(pid_of(info, "host-a"), signal.SIGKILL)
        await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
        await until(lambda: len(lines()) > 2, 10, what="the hook of host-b")
        line = lines()[2]
        assert line[0] == "active" and line[1] == "serving" and int(line[2]) >= 2 and "switchover granted" in line[3], line
        sandbox.start_host(d, "host-a", "standby")
        await wait_status(info, lambda s: s["established"], what="hot standby again")
        r = ctl(info, "switchover", "--yes")  # host-b active -> standby: its hook says standby
        assert r.returncode == 0, r.stderr
        await until(lambda: any(x.startswith("standby ") for x in calls.read_text().splitlines()), 10, what="the standby hook")
        events = log_events(d / "host-b.log")
        assert [e for e in events if e.get("event") == "role_hook_ran"]
    finally:
        sandbox.down(d)


async def test_paused_no_failover_then_resumed_failover_and_history(sb: Any) -> None:
    info = await sb(terminals=10)
    r = ctl(info, "pause")
    assert r.returncode == 0 and "paused" in r.stdout
    r = ctl(info, "status")
    assert "PAUSED" in r.stdout
    os.kill(pid_of(info, "host-a"), signal.SIGKILL)
    await asyncio.sleep(2.0)  # four host timeouts: with failover on, host-b would be active by now
    st = await status(info)
    assert active_names(st) == [] and st["cp"]["switchovers"] == 0 and st["cp"]["paused"]
    r = ctl(info, "resume")
    assert r.returncode == 0 and "resumed" in r.stdout
    # resumed: the CP tells the standby again that the active is gone; it asks and is granted
    await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active after resume")
    # the history survives a restart of a host and of the CP. The old active started as active
    # is refused the role by the CP and rejoins as the standby: the command answers once it is
    # registered (past `starting`), with the role it holds (a start that exits, 76 with
    # --no-rejoin: test_sandbox_safety, test_rejoin)
    d = Path(info["dir"])
    r = run("hsb.ctl", "sandbox", "start-host", "--dir", str(d), "host-a", "--role", "active")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    assert started["name"] == "host-a" and started["role"] == "standby" and started["started_as"] == "active", started
    assert started["state"] not in ("starting", "fenced") and sandbox._alive(started["pid"]), started
    cp_pid = int(sandbox.load_state(d)["cp"]["pid"])
    os.kill(cp_pid, signal.SIGKILL)
    await until(lambda: not sandbox._alive(cp_pid), 10, what="hsbcpd gone")
    r = run("hsb.ctl", "sandbox", "start-cp", "--dir", str(d))
    assert r.returncode == 0 and json.loads(r.stdout)["pid"] == sandbox.load_state(d)["cp"]["pid"], r.stderr
    await wait_status(info, lambda s: s["established"], what="established after the CP restart")
    r = ctl(info, "history")
    kinds = [line.split()[2] for line in r.stdout.splitlines()[1:]]
    assert "pause" in kinds and "resume" in kinds and ("failover" in kinds or "promote" in kinds), r.stdout
    r = ctl(info, "history", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert entries and all("at" in e and "kind" in e for e in entries)


# --------------------------------------------------------------------------- the README's commands


def test_every_command_in_the_readme_answers_help() -> None:
    """The README's operator table cannot drift from the CLI: each command it shows exists."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Operator commands") : text.index("## Configuration reference")]
    commands = set()
    for m in re.finditer(r"^\| `([^`]+)`", table, re.M):
        words = m.group(1).replace("\\|", "|").split()
        prog = words[0]
        sub = [w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w) and w not in ("host-a", "host-b")]
        if prog == "hsbctl":
            sub = [
                w
                for w in sub
                if w
                in (
                    "status",
                    "switchover",
                    "promote",
                    "stop",
                    "pause",
                    "resume",
                    "history",
                    "file",
                    "create",
                    "inspect",
                    "sandbox",
                    "up",
                    "down",
                    "start-host",
                    "start-cp",
                    "tls",
                    "init",
                )
            ]
        elif prog == "hsbterm":
            sub = sub[:1]
        else:
            sub = []
        commands.add((prog, *sub))
    assert {("hsbctl", "stop"), ("hsbctl", "history"), ("hsbctl", "pause")} <= commands, commands
    mod = {"hsbd": "hsb.host", "hsbcpd": "hsb.cp", "hsbctl": "hsb.ctl", "hsbterm": "hsb.term", "hsbcpd|hsbd": None}
    for prog, *sub in sorted(commands):
        if prog not in mod or mod[prog] is None:
            continue
        r = CliRunner().invoke(importlib.import_module(f"{mod[prog]}.main").main, [*sub, "--help"])  # (in-process: a second each)
        assert r.exit_code == 0, (prog, sub, r.output, r.exception)


async def test_a_fenced_active_runs_its_role_change_hook_before_it_exits(tmp_path: Path) -> None:
    """host-a frozen (SIGSTOP) past host_timeout: host-b is made active, its hook says so (a
    command that moves a virtual address takes it). host-a resumed is fenced and exits 75; its
    role never changed on its own side, so its hook never ran and the address stayed on both
    machines (its hook ran only at its start, `active serving`). It runs now, with `active
    fenced`, before the process ends."""
    d, calls, info = await _sandbox_with_hook(tmp_path)
    try:
        a = pid_of(info, "host-a")
        os.kill(a, signal.SIGSTOP)
        try:
            await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
        finally:
            os.kill(a, signal.SIGCONT)
        await until(lambda: not sandbox._alive(a), 20, what="host-a fenced and gone")
        await until(lambda: calls.exists() and "active fenced " in calls.read_text(), 10, what="host-a's hook")
        fenced = [x for x in calls.read_text().splitlines() if x.startswith("active fenced ")]
        assert len(fenced) == 1, calls.read_text()
    finally:
        sandbox.down(d)
