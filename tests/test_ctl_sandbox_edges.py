"""Edges of `hsbctl sandbox` that its end-to-end tests leave open, checked in-process without
starting a daemon: what the files module writes (configs, secret, certificates, what a new
sandbox removes), the state file's shape, and the process helpers of hsb.ctl.sandbox."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hsb import procstat
from hsb.ctl import sandbox, sandbox_files
from hsb.ctl.sandbox_files import SandboxError, describe, lease_for, load_state, new_state, prepare, records_for, state_problem, write_configs
from hsb.host.cpgen import generation_path
from hsb.takeover import SessionEntry, TakeoverWriter, check_file, startup_id
from hsb.takeover.layout import batch_records_for
from tests.support.procs import wait_for

pytestmark = pytest.mark.timeout(60)


def toml(p: Path) -> dict[str, Any]:
    return tomllib.loads(p.read_text())


# ---- hsb.ctl.sandbox_files


@pytest.mark.parametrize("terminals", [1, 200, 5000])
def test_the_takeover_file_holds_header_batch_and_a_ring_of_three_batches_and_64(terminals: int) -> None:
    b = batch_records_for(terminals, 4096)
    assert records_for(terminals) == 1 + b + 3 * b + 64


def test_the_lease_is_the_default_from_half_a_second_on_and_below_the_timeout_less_the_margin() -> None:
    assert lease_for(0.5) == 0.35 and lease_for(2.0) == 0.35
    assert lease_for(0.3) == 0.11  # 0.3 * 0.7 - 0.1
    assert lease_for(0.4) == 0.18
    assert lease_for(0.15) == 0.02  # never below 0.02
    for t in (0.2, 0.25, 0.3, 0.4, 0.45, 0.49, 0.5, 1.0):
        assert lease_for(t) + 0.1 < t, t  # hsb.cp.config.LEASE_MARGIN


def test_the_configs_say_each_option_given(tmp_path: Path) -> None:
    plan = write_configs(
        tmp_path, terminals=3, service="ledger", conventional=True, dsn="postgresql://x/y", host_options={"batch_interval": 0.25}, host_timeout=0.3
    )
    a, b = toml(tmp_path / "host-a.toml"), toml(tmp_path / "host-b.toml")
    for h in (a, b):
        assert h["host"]["fast_switch"] is False  # conventional
        assert h["host"]["batch_interval"] == 0.25
        assert h["service_options"]["dsn"] == "postgresql://x/y" and "sqlite" not in h["service_options"]
        assert "tls" not in h
    assert a["host"]["peer"] == b["host"]["peer_listen"] and b["host"]["peer"] == a["host"]["peer_listen"]
    assert toml(tmp_path / "cp.toml")["cp"]["host_lease"] == 0.11
    assert "tls" not in toml(tmp_path / "ctl.toml") and plan["tls"] is None
    write_configs(tmp_path, terminals=3, service="echo", conventional=False)
    assert toml(tmp_path / "host-a.toml")["host"]["fast_switch"] is True


def test_with_tls_every_link_and_the_terminals_use_the_sandboxs_certificates_made_once(tmp_path: Path) -> None:
    write_configs(tmp_path, terminals=2, service="echo", conventional=False, tls=True)
    t = tmp_path / "tls"
    cp = toml(tmp_path / "cp.toml")
    assert cp["tls"] == {"ca_file": str(t / "ca.pem"), "cert_file": str(t / "cp.pem"), "key_file": str(t / "cp.key"), "terminals": True}
    assert toml(tmp_path / "host-b.toml")["tls"]["cert_file"] == str(t / "host-b.pem")
    assert toml(tmp_path / "ctl.toml")["tls"] == {"ca_file": "tls/ca.pem", "cert_file": "tls/hsbctl.pem", "key_file": "tls/hsbctl.key"}
    certs = {p.name: p.read_bytes() for p in t.iterdir()}
    write_configs(tmp_path, terminals=2, service="echo", conventional=False, tls=True)
    assert {p.name: p.read_bytes() for p in t.iterdir()} == certs  # the next up keeps them
    assert sandbox_files.client_ssl(tmp_path) is not None


def test_an_existing_secret_readable_by_others_is_made_0600_and_kept(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("kept\n")
    (tmp_path / "secret").chmod(0o644)
    write_configs(tmp_path, terminals=2, service="echo", conventional=False)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secret").read_text() == "kept\n"


def test_a_new_sandbox_forgets_an_earlier_ones_journal_books_certificates_and_used_takeover_file(tmp_path: Path) -> None:
    plan = prepare(tmp_path, tls=True, service="ledger", dsn=None, terminals=2, conventional=False)
    assert (tmp_path / "tls" / "ca.pem").exists()
    with TakeoverWriter(plan["takeover"], terminals=2, host_name="host-a") as w:  # the earlier pair wrote it
        w.batch_write(startup_id(datetime(2024, 12, 31, 23, 59, 59)), [SessionEntry("T00001", {"proto": "hsb1"}, True)])
    assert check_file(plan["takeover"]).generation > 0
    (tmp_path / "cp-journal").mkdir()
    (tmp_path / "cp-journal" / "seg").write_text("x")
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"ledger.sqlite{suffix}").write_text("books")
    prepare(tmp_path, tls=False, service="ledger", dsn=None, terminals=2, conventional=False)
    assert check_file(plan["takeover"]).generation == 0
    assert not (tmp_path / "cp-journal").exists() and not (tmp_path / "tls").exists()
    assert not any((tmp_path / f"ledger.sqlite{s}").exists() for s in ("", "-wal", "-shm"))
    assert sandbox_files.client_ssl(tmp_path) is None


def test_a_ledger_in_postgresql_is_not_the_sandboxs_to_remove(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").write_text("someone's books")
    (tmp_path / sandbox_files.MARK).touch()
    prepare(tmp_path, tls=False, service="ledger", dsn="postgresql://x/y", terminals=2, conventional=False)
    assert (tmp_path / "ledger.sqlite").read_text() == "someone's books"


@pytest.mark.parametrize(
    ("state", "what"),
    [
        ({"cp": {}, "hosts": {}}, "cp has no pid"),
        ({"cp": {"pid": True}, "hosts": {}}, "cp.pid is 'True', not a process id"),
        ({"cp": {"pid": 1, "pids": [1, -2]}, "hosts": {}}, "cp.pids is '[1, -2]', not a list of process ids"),
        ({"cp": {"pid": 1, "supervise": "yes"}, "hosts": {}}, "cp.supervise is 'yes', not true or false"),
    ],
)
def test_the_state_files_shape(state: Any, what: str) -> None:
    assert (state_problem(state) or "").startswith(what), state_problem(state)


def test_a_state_file_nested_too_deep_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / sandbox_files.STATE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SandboxError, match="cannot be read .*RecursionError"):
        load_state(tmp_path)


def test_a_process_without_its_admin_address_is_one_clear_error(tmp_path: Path) -> None:
    st = {"cp": {"pid": 0, "config": "cp.toml"}, "hosts": {}}
    with pytest.raises(SandboxError, match="has no hsbcpd with its config and admin address"):
        sandbox_files.process(tmp_path, st, "hsbcpd")


def test_the_state_of_a_new_sandbox_and_its_description(tmp_path: Path) -> None:
    plan = write_configs(tmp_path, terminals=3, service="journal", conventional=False)
    st = new_state(tmp_path, 1234, plan, service="journal", conventional=False, terminals=3, dsn=None, supervise=True)
    assert st["cp"]["pid"] == 1234 and st["cp"]["pids"] == [1234] and st["cp"]["supervise"] is True
    assert st["journals"] == [str(tmp_path / "journal-host-a.log"), str(tmp_path / "journal-host-b.log")]
    assert state_problem(st) is None
    sandbox_files.save_state(tmp_path, st)
    got = describe(tmp_path)
    assert got["terminals"] == ["T00001", "T00002", "T00003"]
    assert got["journals"] == st["journals"] and got["cp"]["pid"] == 1234
    ledger = new_state(tmp_path, 1, plan, service="ledger", conventional=False, terminals=1, dsn=None, supervise=False)
    sandbox_files.save_state(tmp_path, ledger)
    assert describe(tmp_path)["ledger"] == {"sqlite": str(tmp_path / "ledger.sqlite")}


def test_generation_files_of_an_earlier_sandbox_are_removed(tmp_path: Path) -> None:
    plan = prepare(tmp_path, tls=False, service="echo", dsn=None, terminals=2, conventional=False)
    for n in sandbox_files.HOSTS:
        generation_path(plan["takeover"], n).write_text("7")
    prepare(tmp_path, tls=False, service="echo", dsn=None, terminals=2, conventional=False)
    assert not any(generation_path(plan["takeover"], n).exists() for n in sandbox_files.HOSTS)


# ---- hsb.ctl.sandbox


def _zombie() -> subprocess.Popen[bytes]:
    """A child of this process that has ended and is not reaped yet (its command line is empty)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: procstat.state(p.pid) == "Z", 10, what="the child to end")
    return p


def _gone(pid: int) -> bool:
    return not sandbox._alive(pid)


def test_a_tied_child_runs_while_its_parent_lives_and_exits_at_once_if_the_parent_is_gone() -> None:
    assert subprocess.run([sys.executable, "-c", "pass"], preexec_fn=sandbox.dies_with(os.getpid())).returncode == 0
    assert subprocess.run([sys.executable, "-c", "raise SystemExit(3)"], preexec_fn=sandbox.dies_with(1)).returncode == 1


def test_a_tied_child_is_killed_when_the_process_that_started_it_ends(tmp_path: Path) -> None:
    starter = (
        "import os, subprocess, sys\n"
        "from hsb.ctl import sandbox\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,\n"
        "                     preexec_fn=sandbox.dies_with(os.getpid()))\n"
        "print(p.pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, check=True, timeout=30)
    child = int(out.stdout)
    try:
        wait_for(lambda: _gone(child), 5, what="the tied child killed when its starter ended")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


class _Popen:
    calls: list[dict[str, Any]] = []

    def __init__(self, argv: list[str], **kw: Any) -> None:
        _Popen.calls.append(kw)
        self.pid = 4242


def test_daemons_are_tied_to_this_process_only_after_die_with_this_process_and_from_the_main_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "Popen", _Popen)
    _Popen.calls.clear()
    monkeypatch.setattr(sandbox, "_TIED", False)
    assert sandbox._spawn(tmp_path, "cp", ["x"]) == 4242
    assert _Popen.calls[-1]["preexec_fn"] is None and _Popen.calls[-1]["start_new_session"] is True
    monkeypatch.setattr(sandbox, "_TIED", True)
    sandbox._spawn(tmp_path, "cp", ["x"])
    assert callable(_Popen.calls[-1]["preexec_fn"])
    errors: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            sandbox._spawn(tmp_path, "cp", ["x"])
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=from_a_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0]) and len(_Popen.calls) == 2


def test_a_process_this_one_may_not_signal_is_alive_and_one_gone_from_proc_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    with monkeypatch.context() as m:
        m.setattr(os, "kill", refused)
        assert sandbox._alive(12345)
    me = os.getpid()
    assert sandbox._alive(me)
    monkeypatch.setattr(procstat, "state", lambda pid: None)  # gone between the two looks
    assert not sandbox._alive(me)


def test_only_a_daemon_of_the_sandbox_with_a_toml_config_is_ours(tmp_path: Path) -> None:
    d = tmp_path
    assert sandbox._names_config(d, f"python\0-m\0hsb.host\0--config\0{d}/host-a.toml\0".encode())
    assert not sandbox._names_config(d, f"python\0-m\0hsb.ctl\0--config\0{d}/ctl.toml\0status\0".encode())
    assert not sandbox._names_config(d, f"python\0-m\0hsb.cp\0--config\0{d}/secret\0".encode())


def test_an_exiting_daemon_is_no_stranger_a_kernel_thread_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    z = _zombie()
    try:
        assert not sandbox._stranger(tmp_path, z.pid)  # empty command line: one of ours exiting
        assert sandbox._stranger(tmp_path, os.getpid())  # pytest names no config here
        real = procstat.fields

        def kthread(pid: int) -> list[str] | None:
            f = real(pid)
            if f is not None and pid == z.pid:
                f[procstat.FLAGS] = str(int(f[procstat.FLAGS]) | procstat.PF_KTHREAD)
            return f

        monkeypatch.setattr(procstat, "fields", kthread)
        assert sandbox._stranger(tmp_path, z.pid)
    finally:
        z.wait()


def test_running_is_true_for_a_process_still_there_after_the_grace() -> None:
    assert sandbox._running(os.getpid(), 0.0)
    z = _zombie()
    try:
        assert not sandbox._running(z.pid, 0.0)
    finally:
        z.wait()


def test_the_environment_given_to_one_daemon_is_not_left_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def spawn(d: Path, name: str, argv: list[str]) -> int:
        seen.append(os.environ.get("HSB_EDGE_TEST"))
        return 1

    monkeypatch.setattr(sandbox, "_spawn", spawn)
    monkeypatch.delenv("HSB_EDGE_TEST", raising=False)
    assert sandbox._spawn_env(tmp_path, "cp", [], {"HSB_EDGE_TEST": "1"}) == 1
    assert seen == ["1"] and "HSB_EDGE_TEST" not in os.environ


def test_the_cp_under_supervise_is_the_masters_newest_worker() -> None:
    master = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n"
            "print(*[k.pid for k in kids], flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert master.stdout is not None
    kids = [int(k) for k in master.stdout.readline().split()]
    try:
        assert sandbox.cp_process({"cp": {"pid": master.pid, "supervise": True}}) == kids[-1]
        assert sandbox.cp_process({"cp": {"pid": master.pid}}) == master.pid
    finally:
        for k in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGKILL)
        master.kill()
        master.wait()


def _state(d: Path) -> dict[str, Any]:
    plan = write_configs(d, terminals=2, service="echo", conventional=False)
    st = new_state(d, 0, plan, service="echo", conventional=False, terminals=2, dsn=None, supervise=False)
    sandbox_files.save_state(d, st)
    return st


def test_start_host_records_the_role_and_every_pid_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _state(tmp_path)
    pids = iter([2_000_001, 2_000_002])
    monkeypatch.setattr(sandbox, "_spawn", lambda d, name, argv: next(pids))
    monkeypatch.setattr(sandbox, "_running", lambda pid, grace=3.0: False)
    assert sandbox.start_host(tmp_path, "host-a", "active") == 2_000_001
    assert sandbox.start_host(tmp_path, "host-a", "standby") == 2_000_002  # (new_state has host-a active)
    h = load_state(tmp_path)["hosts"]["host-a"]
    assert (h["pid"], h["role"], h["pids"]) == (2_000_002, "standby", [2_000_001, 2_000_002])


def test_start_cp_starts_over_a_recorded_pid_another_program_has_now_not_over_its_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = _state(tmp_path)
    st["cp"]["pid"] = os.getpid()  # this test's own process: alive, and no daemon of the sandbox
    sandbox_files.save_state(tmp_path, st)
    monkeypatch.setattr(sandbox, "_spawn", lambda d, name, argv: 2_000_003)
    assert sandbox.start_cp(tmp_path) == 2_000_003
    assert load_state(tmp_path)["cp"]["pids"] == [0, 2_000_003]
    monkeypatch.setattr(sandbox, "_stranger", lambda d, pid: False)  # now a daemon of the sandbox, still running
    monkeypatch.setattr(sandbox, "_running", lambda pid, grace=3.0: True)
    with pytest.raises(SandboxError, match=r"hsbcpd is still running \(pid 2000003\); stop it first"):
        sandbox.start_cp(tmp_path)


def test_a_daemon_still_running_has_not_exited(tmp_path: Path) -> None:
    assert sandbox._exited(tmp_path, "host-a", os.getpid()) is None


def test_actives_are_the_reachable_hosts_in_the_active_role() -> None:
    s = {"hosts": [{"name": "host-a", "reachable": False, "role": "active"}, {"name": "host-b", "reachable": True, "role": "active"}]}
    assert sandbox.actives(s) == ["host-b"]


def _answers(monkeypatch: pytest.MonkeyPatch, states: list[str]) -> list[str]:
    asked: list[str] = []

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float, ssl: Any = None) -> dict[str, Any]:
        asked.append(addr)
        return {"data": {"state": states[min(len(asked), len(states)) - 1], "last_error": "host-b is active"}}

    monkeypatch.setattr(sandbox, "ask", ask)
    monkeypatch.setattr(sandbox, "_exited", lambda d, name, pid: None)
    return asked


async def test_a_started_host_is_waited_for_past_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _state(tmp_path)
    asked = _answers(monkeypatch, ["starting", "standby"])
    assert (await sandbox.wait_started(tmp_path, "host-b", 1, timeout=10))["state"] == "standby"
    assert len(asked) == 2
    asked = _answers(monkeypatch, ["starting"])
    assert (await sandbox.wait_started(tmp_path, "hsbcpd", 1, timeout=10))["state"] == "starting"  # the CP: as soon as it answers


async def test_a_host_fenced_at_start_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _state(tmp_path)
    _answers(monkeypatch, ["fenced"])
    with pytest.raises(SandboxError, match=r"host-a \(pid 1\) started but is fenced \(host-b is active\)"):
        await sandbox.wait_started(tmp_path, "host-a", 1, timeout=10)


def test_down_kills_a_daemon_that_ignores_sigterm_after_its_timeout(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    d.mkdir()
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    p = subprocess.Popen(
        [sys.executable, "-c", code, "-m", "hsb.cp", "--config", str(d.resolve() / "cp.toml")], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        assert sandbox.down(d, timeout=0.2) == [p.pid]
        assert p.wait(timeout=10) == -signal.SIGKILL
    finally:
        p.kill()
        p.wait()


def test_down_gives_a_daemon_its_timeout_to_stop_on_sigterm(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    d.mkdir()
    code = (
        "import signal, sys, time\n"
        "def stop(*_): raise SystemExit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, "-m", "hsb.host", "--config", str(d.resolve() / "host-a.toml")], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        assert sandbox.down(d, timeout=10) == [p.pid]
        assert p.wait(timeout=10) == 0, "not given the moment to stop by itself"
    finally:
        p.kill()
        p.wait()
