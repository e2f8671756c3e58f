"""Config checking (issue 2 item 4): every error at once with its key path; --check-config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "mod, cfg", [("hsb.cp", "cp.toml"), ("hsb.host", "host-a.toml"), ("hsb.host", "host-b.toml"), ("hsb.cp", "keepalived/cp.toml")]
)
def test_example_configs_check_ok(tmp_path: Path, mod: str, cfg: str) -> None:

    text = (ROOT / "configs" / cfg).read_text().replace("/etc/hsb/secret", "secret").replace("/var/lib/hsb/", "")
    cfg = Path(cfg).name
    (tmp_path / cfg).write_text(text)
    r = run(mod, "--config", str(tmp_path / cfg), "--check-config")
    assert r.returncode == 78 and "secret file" in r.stderr and "does not exist" in r.stderr  # the secret is checked too
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)
    r = run(mod, "--config", str(tmp_path / cfg), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "config OK" in r.stdout


def test_every_error_reported_at_once_with_key_paths(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(
        """
[host]
name = "a"
peer = "nohostport"
peer_listen = "127.0.0.1:1"
cp = "127.0.0.1:2"
admin_listen = "127.0.0.1:3"
secret_file = "s"
heartbaet_interval = 0.1

[takeover]
path = "f"
records = 2

[[terminals]]
name = "has space"
"""
    )
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("config error:") for line in lines)
    text = r.stderr
    assert "host.peer:" in text and "not HOST:PORT" in text
    assert "host.heartbaet_interval: unknown key" in text
    assert "takeover.records:" in text
    assert "terminals[0].name:" in text
    assert len(lines) >= 4


def test_timing_that_cannot_work_is_rejected(tmp_path: Path) -> None:
    base = (ROOT / "configs" / "host-a.toml").read_text()
    p = tmp_path / "h.toml"
    p.write_text(base.replace("heartbeat_timeout = 0.5", "heartbeat_timeout = 0.2"))
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78
    assert "heartbeat_timeout" in r.stderr and "two heartbeat intervals" in r.stderr


def test_cp_config_errors_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "cp.toml"
    p.write_text('[cp]\nsecret_file = "s"\nheld_bound = 0\ntypo = 1\nmax_frame = 1000\n')
    r = run("hsb.cp", "--config", str(p), "--check-config")
    assert r.returncode == 78
    assert "cp.held_bound" in r.stderr and "cp.typo: unknown key" in r.stderr
    # a frame too small for a login (4 KiB) would fail every link at its first frame
    assert "cp.max_frame" in r.stderr and "4096" in r.stderr
    r = run("hsb.cp", "--config", str(tmp_path / "missing.toml"), "--check-config")
    assert r.returncode == 78 and "file not found" in r.stderr
    p.write_text("[cp\n")
    r = run("hsb.cp", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "TOML syntax error" in r.stderr


@pytest.mark.parametrize(
    ("timeout", "lease", "ok"),
    [(0.5, 0.35, True), (0.5, 0.39, True), (0.5, 0.4, False), (0.5, 0.5, False), (0.5, 0.6, False), (2.0, 1.85, True)],
)
def test_the_lease_rule_is_checked(tmp_path: Path, timeout: float, lease: float, ok: bool) -> None:
    """The CP grants the active role to another host only once the old active's lease has
    surely run out: the check refuses a host_lease >= host_timeout - the margin (0.1 s)."""
    (tmp_path / "s").write_text("s3cret\n")
    (tmp_path / "s").chmod(0o600)
    p = tmp_path / "cp.toml"
    p.write_text(f'[cp]\nsecret_file = "s"\nhost_timeout = {timeout}\nhost_lease = {lease}\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(p), "--check-config")
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 78, r.stdout
        assert "host_lease" in r.stderr and "margin (0.1 s)" in r.stderr and "host_timeout" in r.stderr, r.stderr
        assert f"below {timeout - 0.1:g}" in r.stderr, r.stderr


def test_daemon_refuses_a_secret_readable_by_others(tmp_path: Path) -> None:
    import shutil

    shutil.copy(ROOT / "configs" / "cp.toml", tmp_path / "cp.toml")
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o644)
    r = run("hsb.cp", "--config", str(tmp_path / "cp.toml"))
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "secret" in last and "chmod 600" in last


def test_terminal_groups_expand_with_their_names_checked_and_no_name_twice() -> None:
    """Groups expand to plain members (not one model each: 0.1 s of every start at 10,000);
    their names are still checked (by the longest) and a name defined twice is still refused."""
    from hsb.terminals import TerminalDef, TerminalGroup, expand_all

    g = TerminalGroup(prefix="T", count=12, start=99_995, attrs={"kind": "till"}, standby_capable=False)
    defs = expand_all([TerminalDef(name="ONE")], [g])
    assert list(defs) == ["ONE", *(f"T{i}" for i in range(99_995, 100_007))]  # width 5, then 6 digits
    last = defs["T100006"]
    assert (last.standby_capable, last.attrs) == (False, {"kind": "till"})
    with pytest.raises(ValueError, match="'T00002' is defined twice"):
        expand_all([TerminalDef(name="T00002")], [TerminalGroup(prefix="T", count=3)])
    with pytest.raises(ValueError, match="'T00003' is defined twice"):
        expand_all([], [TerminalGroup(prefix="T", count=3), TerminalGroup(prefix="T", count=2, start=3)])
    with pytest.raises(ValueError, match="'ONE' is defined twice"):
        expand_all([TerminalDef(name="ONE"), TerminalDef(name="ONE")], [])
    with pytest.raises(ValueError, match="no spaces"):
        expand_all([], [TerminalGroup(prefix="T ", count=1)])
    with pytest.raises(ValueError, match="1..48 bytes"):  # only the last name is too long
        expand_all([], [TerminalGroup(prefix="P" * 43, count=2, start=99_999)])
    # every problem at once, each naming its entry (the first one found was all that was said,
    # and a bad prefix named no group)
    with pytest.raises(ValueError) as both:
        expand_all([TerminalDef(name="T00002")], [TerminalGroup(prefix="T", count=3), TerminalGroup(prefix="B AD", count=2)])
    assert "terminal_groups[0]: terminal 'T00002' is defined twice" in str(both.value), both.value
    assert "terminal_groups[1] (prefix 'B AD'): " in str(both.value) and "no spaces" in str(both.value), both.value
    with pytest.raises(ValueError, match="1,800,000 terminals in all: at most 1,000,000"):  # before anything is expanded
        expand_all([], [TerminalGroup(prefix=f"G{i}", count=600_000) for i in range(3)])


def test_session_attributes_the_takeover_file_cannot_hold_are_a_host_config_error(tmp_path: Path) -> None:
    """A standby-capable terminal's attrs on a host that one takeover file entry cannot hold (too
    large with its name, or a value with no MessagePack form such as a TOML date): refused by
    the check, naming the key and the fix, instead of failing the active's ring writes at that
    terminal's logon, again and again, while both hosts still said established. Attributes that
    fit with their own name, and the CP's own table, are not refused. (Every terminal of a host
    is checked: which ones are standby-capable, and so in the file, is the CP's to say.)"""
    from tests.support.procs import host_config

    p = host_config(
        tmp_path, "a", cp="127.0.0.1:2", peer_listen="127.0.0.1:3", peer="127.0.0.1:4", takeover=tmp_path / "t.dat", records=64, terminals=0
    )
    base = p.read_text()
    fits = f'[[terminals]]\nname = "T00001"\nattrs = {{ note = "{"x" * 220}" }}\n'  # 237 bytes with its name
    p.write_text(base + fits)
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 0, r.stderr
    p.write_text(
        base
        + fits
        + f'[[terminals]]\nname = "BIG"\nattrs = {{ note = "{"x" * 300}" }}\n'
        + '[[terminal_groups]]\nprefix = "D"\ncount = 2\nattrs = { since = 2026-12-02 }\n'
    )
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78, r.stderr
    assert "terminals[1].attrs: attrs of 'BIG' take" in r.stderr and "entry holds 256: shorten them" in r.stderr, r.stderr
    assert "terminal_groups[0].attrs: attrs cannot be kept in the takeover file" in r.stderr, r.stderr
    cp = tmp_path / "cp.toml"
    cp.write_text(f'[cp]\nsecret_file = "s"\n[[terminals]]\nname = "BIG"\nattrs = {{ note = "{"x" * 300}" }}\n')
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 0, r.stderr


def test_a_failed_system_call_at_start_names_its_file_or_the_ports() -> None:
    """A storage error on the takeover file at start (EIO, EACCES, ESTALE) says which file and
    what to check; it was reported as 'is another hsbd using these ports?'."""
    import errno

    from hsb.host.main import start_error

    msg = start_error(OSError(errno.EIO, "Input/output error", "/srv/hsb/takeover.dat"))
    assert msg.startswith("cannot start: /srv/hsb/takeover.dat: Input/output error (check that file") and "ports" not in msg
    assert "is another hsbd using these ports" in start_error(OSError(errno.EADDRINUSE, "Address already in use"))
    eio = start_error(OSError(errno.EIO, "Input/output error"))  # a read on the open takeover file names none
    assert "check the takeover file's storage" in eio and "another hsbd" not in eio


def test_file_options_are_relative_to_the_config_files_folder(tmp_path: Path) -> None:
    """The README says relative paths in a config are relative to its folder: the CP's wake_file
    and the built-in services' files were taken relative to the working directory (`/` under
    systemd, so the journal service's default could not even be written). A service of one's
    own gets its options as written."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.host.config import HostConfig

    d = tmp_path / "etc"
    d.mkdir()
    cp = d / "cp.toml"
    cp.write_text(
        '[cp]\nterminal_listen = "127.0.0.1:1"\nhost_listen = "127.0.0.1:2"\nadmin_listen = "127.0.0.1:3"\n'
        'secret_file = "s"\nwake_file = "run/wake"\n\n[[terminals]]\nname = "T1"\n'
    )
    c = load(cp, CPConfig)
    assert c.cp.wake_file == str(d / "run" / "wake")
    cp.write_text(cp.read_text().replace('wake_file = "run/wake"\n', ""))
    assert load(cp, CPConfig).cp.wake_file == ""  # none stays none

    head = (
        '[host]\nname = "a"\npeer = "127.0.0.1:4"\npeer_listen = "127.0.0.1:5"\ncp = "127.0.0.1:2"\n'
        'admin_listen = "127.0.0.1:6"\nsecret_file = "s"\nservice = "{service}"\n\n[takeover]\npath = "f"\nrecords = 16\n\n'
        '[[terminals]]\nname = "T1"\n\n'
    )
    host = d / "host.toml"
    host.write_text(head.format(service="journal"))
    assert load(host, HostConfig).service_options == {"journal": str(d / "journal.log")}  # its default too
    host.write_text(head.format(service="journal") + '[service_options]\njournal = "j/a.log"\nlogon_ms = 1\n')
    assert load(host, HostConfig).service_options == {"journal": str(d / "j" / "a.log"), "logon_ms": 1}
    host.write_text(head.format(service="ledger") + '[service_options]\nsqlite = "ledger.db"\n')
    assert load(host, HostConfig).service_options == {"sqlite": str(d / "ledger.db")}
    host.write_text(head.format(service="ledger") + '[service_options]\nsqlite = "/abs/l.db"\n')
    assert load(host, HostConfig).service_options == {"sqlite": "/abs/l.db"}
    host.write_text(head.format(service="ledger") + '[service_options]\ndsn = "postgresql://x/y"\n')
    assert load(host, HostConfig).service_options == {"dsn": "postgresql://x/y"}  # no file, none made up
    # the built-in services named by their factories are the same services: the same paths
    host.write_text(head.format(service="hsb.service.builtin:JournalService"))
    assert load(host, HostConfig).service_options == {"journal": str(d / "journal.log")}
    host.write_text(head.format(service="hsb.service.ledger:LedgerService") + '[service_options]\nsqlite = "ledger.db"\n')
    assert load(host, HostConfig).service_options == {"sqlite": str(d / "ledger.db")}
    host.write_text(head.format(service="mine.mod:make") + '[service_options]\njournal = "rel.log"\n')
    assert load(host, HostConfig).service_options == {"journal": "rel.log"}


def test_cp_terminal_attrs_the_cp_cannot_send_are_a_cp_config_error(tmp_path: Path) -> None:
    """The CP sends a terminal's attrs from its config in each session request: a value with no
    MessagePack form (a TOML date) failed every session request at run time (the terminals after
    it never asked for), and a huge one made a frame the hosts refuse. Both refused by the check,
    naming the key; attrs of a fair size (more than a takeover file entry holds) are fine."""
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    cp = tmp_path / "cp.toml"
    cp.write_text(
        '[cp]\nsecret_file = "s"\n'
        f'[[terminals]]\nname = "OK"\nattrs = {{ note = "{"x" * 1000}" }}\n'
        '[[terminals]]\nname = "T1"\nattrs = { opened = 1979-05-27 }\n'
        f'[[terminal_groups]]\nprefix = "G"\ncount = 2\nattrs = {{ note = "{"x" * 3000}" }}\n'
    )
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78, r.stderr
    assert "terminals[1].attrs: attrs cannot be sent to the hosts" in r.stderr, r.stderr
    assert "terminal_groups[0].attrs: attrs of 'G00002' take" in r.stderr and "keep them under 2048" in r.stderr, r.stderr
    assert "terminals[0]" not in r.stderr and "Traceback" not in r.stderr


def test_values_that_could_only_fail_later_are_config_errors(tmp_path: Path) -> None:
    """A role-change hook that does not split as a shell would split it, or whose program does not
    exist (found only at the first failover, before), a port 0 to connect to (retried for ever),
    a takeover file larger than its format allows, a CP name with a space, and a config nested
    too deeply to read (a traceback before): each one line naming the key and the fix."""
    from tests.support.procs import host_config

    def config(**host: Any) -> Path:
        base: dict[str, Any] = {"cp": "127.0.0.1:2", "peer_listen": "127.0.0.1:3", "peer": "127.0.0.1:4", "records": 64}
        return host_config(tmp_path, "a", takeover=tmp_path / "t.dat", terminals=2, **{**base, **host})

    p = config(cp="127.0.0.1:0", peer="127.0.0.1:0", records=5_000_000_000, on_role_change="/usr/local/bin/notify 'x")
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    for want in (
        "host.on_role_change",
        "No closing quotation: quote the command as a shell would",
        "host.cp",
        "host.peer",
        "port 0",
        "takeover.records",
    ):
        assert want in r.stderr, (want, r.stderr)
    p = config(on_role_change=str(tmp_path / "no-such-hook") + " --flag")
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "no-such-hook' is not an executable program" in r.stderr, r.stderr
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    p.write_text(p.read_text().replace(str(tmp_path / "no-such-hook"), str(hook)))
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 0, r.stderr
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    cp = tmp_path / "cp.toml"
    cp.write_text('[cp]\nname = "cp one"\nsecret_file = "s"\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "cp.name" in r.stderr and "has a space" in r.stderr, r.stderr
    cp.write_text('[cp]\nsecret_file = "s"\nx = ' + "[" * 5000 + "]" * 5000 + '\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "nested too deeply to read; flatten them" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_cp_check_says_what_the_start_would_refuse_about_the_journal_directory(tmp_path: Path) -> None:
    """--check-config (the unit's ExecStartPre) passed a journal the start could not make (under
    the shipped unit: anywhere but /var/lib/hsb), and the start then failed with exit 1, restarted
    every 100 ms for ever. Both say it now, naming the key and the fix; exit 78 (not restarted)."""
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    (tmp_path / "afile").write_text("not a directory")
    cp = tmp_path / "cp.toml"
    # the start below exits before it listens; were it to listen, on ports of this test's own
    ports = f'terminal_listen = "127.0.0.1:{free_port()}"\nhost_listen = "127.0.0.1:{free_port()}"\n'
    cp.write_text('[cp]\nsecret_file = "s"\njournal = "afile/cp-journal"\nadmin_listen = "127.0.0.1:0"\n' + ports + '[[terminals]]\nname = "T1"\n')
    for args in (["--check-config"], []):
        r = run("hsb.cp", "--config", str(cp), *args)
        assert r.returncode == 78, (args, r.stderr)
        assert "cp.journal" in r.stderr and "cannot be made" in r.stderr and "/var/lib/hsb" in r.stderr, r.stderr
    cp.write_text(cp.read_text().replace("afile/cp-journal", "fine/cp-journal"))
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 0, r.stderr


def test_independent_problems_across_sections_are_all_reported_at_once(tmp_path: Path) -> None:
    """Each check of a section, and the checks of the config as a whole (the terminal table, the
    takeover file's size), ran only until the first failure: one fix, one run, the next error.
    N independent problems now give N lines (Patroni's --validate-config)."""
    from tests.support.procs import host_config

    p = host_config(
        tmp_path,
        "a",
        cp="127.0.0.1:2",
        peer_listen="127.0.0.1:3",
        peer="127.0.0.1:3",  # this host's own peer_listen
        takeover=tmp_path / "t.dat",
        records=4,  # too small for 100 terminals
        terminals=100,
        heartbeat_interval=0.5,
        heartbeat_timeout=0.6,  # one late heartbeat
    )
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78, r.stderr
    for want in ("heartbeat_timeout (0.6s) must be greater", "host.peer must be the other host's peer_listen", "takeover.records"):
        assert want in r.stderr, (want, r.stderr)
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    cp = tmp_path / "cp.toml"
    cp.write_text(
        '[cp]\nsecret_file = "s"\ntakeover = "on_wake"\ndurability = "none"\nterminal_listen = "0.0.0.0:7000"\n'
        "host_timeout = 0.5\nhost_lease = 0.45\n"
        '[[terminals]]\nname = "T1"\n[[terminals]]\nname = "T1"\n'
    )
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78, r.stderr
    for want in ('needs the journal (durability = "fsync")', "needs terminal_listen on the virtual address", "host_lease (0.45 s)", "T1"):
        assert want in r.stderr, (want, r.stderr)
    cp.write_text('[cp]\nsecret_file = "s"\nhost_timeout = -1\n[[terminals]]\nname = "T1"\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "cp.host_timeout" in r.stderr and "T1" in r.stderr and "twice" in r.stderr, r.stderr


def test_a_hook_timeout_that_lets_a_stop_outlast_the_unit_is_a_warning(tmp_path: Path) -> None:
    """A role hook with hook_timeout = 50: a stop may take 40 s + 2 x 50 s, and systemd kills hsbd
    after the unit's TimeoutStopSec=60 (a failover, not a stop) while hsbctl stop says it did not
    stop: --check-config said nothing. It warns, naming both fixes; the default 10 s does not, nor
    a hook_timeout without a hook."""
    import re

    from hsb.ctl.main import main
    from hsb.host.hooks import UNIT_STOP_S
    from tests.support.procs import free_port, host_config

    unit = (Path(__file__).parent.parent / "configs" / "systemd" / "hsbd@.service").read_text()
    assert re.search(rf"^TimeoutStopSec={UNIT_STOP_S:g}$", unit, re.M)  # (the warning's numbers are the unit's)
    (opt,) = [o for o in main.commands["stop"].params if o.name == "timeout"]
    assert opt.default == UNIT_STOP_S, opt.default

    def check(**host: Any) -> str:
        p = host_config(
            tmp_path, "a", cp="127.0.0.1:7000", peer_listen=f"127.0.0.1:{free_port()}", peer="127.0.0.1:7102",
            takeover=tmp_path / "t.dat", records=64, **host,
        )  # fmt: skip
        r = run("hsb.host", "--config", str(p), "--check-config")
        assert r.returncode == 0, r.stderr
        return r.stderr

    err = check(on_role_change="/bin/true", hook_timeout=50)
    line = next((ln for ln in err.splitlines() if "host.hook_timeout" in ln), "")
    assert line.startswith("config warning: host.hook_timeout = 50 s: a stop may take up to 140 s"), err
    assert "TimeoutStopSec=140 in a drop-in" in line and "hsbctl stop --timeout 140" in line and "hook_timeout to 10 or less" in line, line
    assert "host.hook_timeout" not in check(on_role_change="/bin/true")
    assert "host.hook_timeout" not in check(hook_timeout=50)


@pytest.mark.timeout(60)
def test_the_start_logs_the_hook_timeout_that_lets_a_stop_outlast_the_unit(tmp_path: Path) -> None:
    """The same hook_timeout = 50: --check-config warned, but a start without the check (the
    unit's) said nothing. hsbd's start logs hook_timeout_outlasts_stop with the check's line."""
    from hsb.host.hooks import stop_time_warning
    from tests.support.procs import create_takeover_file, free_port, host_config, start_host

    create_takeover_file(tmp_path / "t.dat", 64)
    p = host_config(
        tmp_path, "a", cp=f"127.0.0.1:{free_port()}", peer_listen=f"127.0.0.1:{free_port()}", peer=f"127.0.0.1:{free_port()}",
        takeover=tmp_path / "t.dat", records=64, on_role_change="/bin/true", hook_timeout=50,
    )  # fmt: skip
    host = start_host(tmp_path, "host-a", "standby", p)
    try:
        (ev,) = host.events("hook_timeout_outlasts_stop")
    finally:
        host.stop()
    assert ev["level"] == "warning" and ev["hook_timeout"] == 50, ev
    assert ev["msg"] == stop_time_warning("/bin/true", 50), ev  # (one sentence: --check-config's)
    assert "TimeoutStopSec=140 in a drop-in" in ev["msg"], ev


def test_addresses_and_timings_that_would_misbehave_are_config_errors(tmp_path: Path) -> None:
    """An IPv6 address without brackets (its port forgotten: "fd00::2" read as host "fd00:", port
    2), two listeners of one daemon on one port, timings too small to run (a loop that never
    sleeps, every login timed out), and a --config that is a directory (a click usage error, exit
    2, which systemd restarts for ever): each one line, exit 78. A host_timeout in milliseconds
    by mistake is a warning."""
    from tests.support.procs import cp_config, host_config

    p = host_config(
        tmp_path, "a", cp="fd00::2", peer_listen="127.0.0.1:7101", peer="127.0.0.1:7102", takeover=tmp_path / "t.dat", records=64,
        admin_listen="0.0.0.0:7101", heartbeat_interval=0.001, heartbeat_timeout=0.01,
    )  # fmt: skip
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    for want in ("host.cp: ", "write an IPv6 address in brackets, [ADDR]:PORT", "host.heartbeat_interval", "host.heartbeat_timeout"):
        assert want in r.stderr, (want, r.stderr)
    p.write_text(p.read_text().replace('"fd00::2"', '"[fd00::2]:7000"').replace("0.001", "0.1").replace("0.01", "0.5"))
    r = run("hsb.host", "--config", str(p), "--check-config")  # (the rules across keys, once each key is valid)
    assert r.returncode == 78 and "peer_listen and admin_listen both listen on port 7101" in r.stderr, r.stderr
    # the takeover file: not there yet is a warning (made later, or a mount not up yet: the start
    # waits, exit 1); a directory is an error, as the start says it
    p.write_text(p.read_text().replace('admin_listen = "0.0.0.0:7101"', 'admin_listen = "127.0.0.1:0"'))
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 0 and "config warning: takeover.path: takeover file" in r.stderr and "does not exist" in r.stderr, r.stderr
    (tmp_path / "t.dat").mkdir()
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "takeover.path: takeover file" in r.stderr and "is a directory" in r.stderr, r.stderr
    cp = cp_config(tmp_path, terminals=1, auth_timeout=0.001)
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "cp.auth_timeout" in r.stderr, r.stderr
    cp = cp_config(tmp_path, terminals=1, admin_listen="127.0.0.1:7200", http_listen="[::]:7200")
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "admin_listen and http_listen both listen on port 7200" in r.stderr, r.stderr
    cp = cp_config(tmp_path, terminals=1, host_timeout=500, host_lease=0.35)
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 0 and "config warning: cp.host_timeout = 500 s" in r.stderr and "not milliseconds" in r.stderr, r.stderr
    for mod in ("hsb.cp", "hsb.host"):
        r = run(mod, "--config", str(tmp_path), "--check-config")
        assert r.returncode == 78 and "is a directory, not a config file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_a_cp_address_that_does_not_resolve_is_logged_not_retried_in_silence(tmp_path: Path) -> None:
    """A CP name the resolver does not know passes the config check (names resolve at connect
    time), and its lookup failure was an OSError retried with backoff in silence: hsbd ran and
    nobody said why it never registered. Now said once (then once a minute), and the same for
    the peer."""
    from tests.support.procs import create_takeover_file, host_config, log_events, start_host, until

    create_takeover_file(tmp_path / "t.dat", 64)
    p = host_config(
        tmp_path, "a", cp="no-such-cp.invalid:7000", peer_listen="127.0.0.1:0", peer="no-such-peer.invalid:7101",
        takeover=tmp_path / "t.dat", records=64,
    )  # fmt: skip
    h = start_host(tmp_path, "a", "standby", p)
    try:
        log = tmp_path / "a.log"

        def said() -> set[str]:
            return {str(e.get("event")) for e in log_events(log) if "unresolved" in str(e.get("event"))}

        await until(lambda: said() == {"cp_address_unresolved", "peer_address_unresolved"}, 20, what="both lookups said")
        e = next(e for e in log_events(log) if e.get("event") == "cp_address_unresolved")
        assert "no-such-cp.invalid" in e["reason"] and "host.cp" in e["msg"], e
    finally:
        h.stop()


def test_the_secret_is_checked_even_when_the_schema_fails_and_a_wake_file_dir_is_refused(tmp_path: Path) -> None:
    """Every error at once: a config with a schema error and a secret readable by others said only
    the schema's (the secret's came at the next run). And a `wake_file` naming a directory was
    read as "not master" for ever, in silence."""
    (tmp_path / "s").write_text("s3cret\n")
    (tmp_path / "s").chmod(0o644)
    p = tmp_path / "cp.toml"
    p.write_text('[cp]\nsecret_file = "s"\nheld_bound = 0\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "cp.held_bound" in r.stderr and "secret" in r.stderr and "chmod" in r.stderr, r.stderr
    (tmp_path / "s").chmod(0o600)
    (tmp_path / "state").mkdir()
    p.write_text('[cp]\nsecret_file = "s"\nwake_file = "state"\n[[terminals]]\nname = "T1"\n')
    r = run("hsb.cp", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "cp.wake_file" in r.stderr and "is a directory" in r.stderr, r.stderr


def test_a_host_name_the_resolver_cannot_encode_and_a_path_with_a_nul_are_config_errors(tmp_path: Path) -> None:
    """`a..b:7000` (an empty label) passed the check and the start died with uvloop's UnicodeError
    traceback (hsbd retried it for ever, logging it every 0.1 s); a path with a NUL (TOML allows
    the escape) passed and every open of it failed with a traceback. Each is one line, exit 78;
    hsbctl asked at such an address says it cannot ask, with no traceback."""
    from tests.support.procs import SECRET, cp_config

    cp = cp_config(tmp_path, terminals=1, terminal_listen="a..b:7000")
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "Traceback" not in r.stderr and "cp.terminal_listen" in r.stderr and "not a valid host name" in r.stderr, r.stderr
    cp = cp_config(tmp_path, terminals=1)
    cp.write_text(cp.read_text().replace('secret_file = "secret"', 'secret_file = "sec\\u0000ret"'))
    r = run("hsb.cp", "--config", str(cp), "--check-config")
    assert r.returncode == 78 and "Traceback" not in r.stderr and "cp.secret_file" in r.stderr and "NUL" in r.stderr, r.stderr
    (tmp_path / "ctl-secret").write_bytes(SECRET)
    (tmp_path / "ctl-secret").chmod(0o600)
    r = run("hsb.ctl", "--cp", "a..b:7002", "--host", "127.0.0.1:1", "--secret-file", str(tmp_path / "ctl-secret"), "status")
    assert r.returncode == 3 and "Traceback" not in r.stderr + r.stdout and "not a valid host name" in r.stderr, r.stderr


@pytest.mark.timeout(120)
def test_a_takeover_path_that_is_a_directory_exits_78_at_the_start_as_at_the_check(tmp_path: Path) -> None:
    """--check-config said it with 78 (a config error: a restart cannot fix it) and the start with
    1, which systemd restarts for ever; docs/operations.md §17 promises the same code from both."""
    from tests.support.procs import host_config

    takeover = tmp_path / "t.dat"
    takeover.mkdir()
    p = host_config(tmp_path, "a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:2", takeover=takeover, records=64)
    r = run("hsb.host", "--config", str(p), "--check-config")
    assert r.returncode == 78 and "config error: takeover.path: takeover file" in r.stderr and "is a directory" in r.stderr, r.stderr
    for role in ("active", "standby"):
        r = run("hsb.host", "--config", str(p), "--role", role)
        assert r.returncode == 78 and "Traceback" not in r.stderr, (role, r.returncode, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("config error: takeover.path: takeover file") and "is a directory" in last and "hsbctl file create" in last, last


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (("--check-config", "--set-journal-aside"), ("--set-journal-aside does not go with --check-config", "--set-journal-aside' alone")),
        (("--set-journal-aside", "--force", "--check-config"), ("--set-journal-aside does not go with --check-config",)),
        (("--set-journal-aside", "--supervise"), ("--set-journal-aside does not go with --supervise",)),
        (("--check-config", "--force"), ("--force goes with --set-journal-aside only", "drop it")),
    ],
)
def test_hsbcpd_refuses_contradictory_flags(tmp_path: Path, flags: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    """`--check-config --set-journal-aside` moved the journal aside (with --force, one that was not
    damaged: what it held was lost) instead of checking; `--force` alone was ignored. A usage
    error (exit 2) now, and the journal untouched."""
    from tests.support.procs import cp_config

    cp = cp_config(tmp_path, terminals=1)
    journal = tmp_path / "cp-journal"
    journal.mkdir()
    (journal / "gen-00000003").write_text("3\n")
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(journal))
    r = run("hsb.cp", "--config", str(cp), *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(journal))) == before
