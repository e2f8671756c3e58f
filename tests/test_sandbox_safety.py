"""`hsbctl sandbox` never harms what is not its own: `up` refuses a folder that is neither new,
empty nor an earlier sandbox's (it would replace files there); `down` signals only processes
that are still the sandbox's (a recorded pid now used by another program is left alone); a
start that fails or is interrupted leaves no daemon running; a broken state file is a one-line
error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox, sandbox_files
from tests.support.procs import until, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _nothing_left(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Whatever a test here started (a start that should have been refused, say) is stopped."""
    yield
    for d in [tmp_path, *tmp_path.iterdir()]:
        for pid in _daemons_of(d):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _daemons_of(d: Path) -> list[int]:
    """Processes whose command line names a config in `d` (what the sandbox starts)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and sandbox._ours(d, int(p.name)):
            out.append(int(p.name))
    return out


def _unrecorded_cp(d: Path) -> subprocess.Popen[bytes]:
    """A process with a sandbox CP's command line that no state file names: what an `up` killed
    between starting hsbcpd and writing its state file leaves running."""
    d.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "hsb.cp", "--config", str(d.resolve() / "cp.toml")]
    return subprocess.Popen(argv, start_new_session=True)


@pytest.mark.parametrize("state_file", [False, True])
def test_down_stops_a_daemon_that_an_up_cut_short_never_recorded(tmp_path: Path, state_file: bool) -> None:
    """`up` starts hsbcpd and then writes the state file: killed in between (SIGKILL, SIGTERM),
    its hsbcpd ran on, holding the sandbox's ports, and `down` (which read the state file only)
    said the folder holds no sandbox, or stopped the earlier run's pids only."""
    d = tmp_path / "sb"
    stray = _unrecorded_cp(d)
    try:
        wait_for(lambda: _daemons_of(d) == [stray.pid], 10, what="the stray to show its command line")
        if state_file:  # an earlier up's state: its pids are gone
            (d / sandbox.STATE).write_text(json.dumps({"cp": {"pid": 0, "pids": []}, "hosts": {"host-a": {"pid": 0}}}))
        with pytest.raises(sandbox.SandboxError, match=rf"daemons of a sandbox in {d} are running \(pids {stray.pid}\); 'hsbctl sandbox down"):
            sandbox.up(d, terminals=2)
        assert sandbox.down(d, timeout=2) == [stray.pid]
        assert stray.wait(timeout=10) == -15, "down did not stop it (SIGTERM)"
        assert _daemons_of(d) == []
    finally:
        stray.kill()
        stray.wait()
    if not state_file:
        with pytest.raises(sandbox.SandboxError, match="holds no sandbox"):
            sandbox.down(d)


def test_up_refuses_a_folder_that_is_not_a_sandbox(tmp_path: Path) -> None:
    d = tmp_path / "hsb"
    d.mkdir()
    (d / "takeover.dat").write_bytes(b"production data")
    (d / "cp.toml").write_text("# an operator's config\n")
    with pytest.raises(sandbox.SandboxError, match="is not empty and holds no sandbox .*cp.toml, takeover.dat.*give a new or empty folder"):
        sandbox.up(d, terminals=2)
    assert (d / "takeover.dat").read_bytes() == b"production data"
    assert (d / "cp.toml").read_text() == "# an operator's config\n"
    assert sorted(p.name for p in d.iterdir()) == ["cp.toml", "takeover.dat"]


def test_down_leaves_alone_a_process_that_took_over_a_recorded_pid(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    d.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = {"cp": {"pid": other.pid, "pids": [other.pid]}, "hosts": {"host-a": {"pid": other.pid, "pids": [other.pid]}}}
        (d / sandbox.STATE).write_text(json.dumps(state))
        assert sandbox.down(d, timeout=0.5) == []
        assert other.poll() is None, "down signalled a process that is not the sandbox's"
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("text", ["{", "{}", "[]", '{"cp": {}}'])
def test_a_broken_state_file_is_one_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / sandbox.STATE).write_text(text)
    with pytest.raises(sandbox.SandboxError, match="cannot be read .*stop the sandbox's processes by hand"):
        sandbox.down(tmp_path)


_SHAPES = [
    ({"cp": 5, "hosts": {}}, "cp is '5', not an object with its process's pid"),
    ({"cp": {"pid": 1}, "hosts": {"host-a": {"pid": "x"}}}, "hosts.host-a.pid is 'x', not a process id"),
    ({"cp": {"pid": 1}, "hosts": []}, "hosts is '[]', not an object of the hosts"),
]


@pytest.mark.parametrize("command", [["down"], ["up"], ["start-host", "host-a", "--role", "standby"]])
@pytest.mark.parametrize(("state", "what"), _SHAPES)
def test_a_state_file_of_the_wrong_shape_is_one_line_naming_what_is_wrong(tmp_path: Path, command: list[str], state: Any, what: str) -> None:
    """sandbox.json was checked only for its cp and hosts keys: {"cp": 5, "hosts": {}} was an
    AttributeError traceback, a pid "x" a TypeError from os.kill, in down, up and start-host
    alike. It is one line naming the file, what is wrong and the fix, exit 1 (docs/operations.md
    §17), and nothing is started."""
    from tests.support.cli import invoke, one_line_error

    (tmp_path / sandbox.STATE).write_text(json.dumps(state))
    verb, *rest = command
    line = one_line_error(*invoke("sandbox", verb, "--dir", str(tmp_path), *rest), 1, f"{tmp_path / sandbox.STATE} cannot be read", what)
    assert "stop the sandbox's processes by hand" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [sandbox.STATE], "something was started"


def test_start_host_of_a_state_file_without_its_config_is_one_line(tmp_path: Path) -> None:
    from tests.support.cli import invoke, one_line_error

    (tmp_path / sandbox.STATE).write_text(json.dumps({"cp": {"pid": 0}, "hosts": {"host-a": {"pid": 0}}}))
    args = ("sandbox", "start-host", "--dir", str(tmp_path), "host-b", "--role", "standby")
    one_line_error(*invoke(*args), 1, "has no host-b with its config and admin address")
    one_line_error(*invoke(*args[:4], "host-a", "--role", "standby"), 1, "has no host-a with its config and admin address")
    one_line_error(*invoke("sandbox", "start-cp", "--dir", str(tmp_path)), 1, "has no hsbcpd with its config and admin address")


def test_a_cp_that_exits_at_start_is_reported_at_once_and_nothing_is_left(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    with pytest.raises(sandbox.SandboxError, match=r"hsbcpd \(pid \d+\) exited at start; log .*cp.log ends"):
        sandbox.up(d, terminals=2, cp_options={"held_bound": 0})
    assert _daemons_of(d) == []
    assert oct((d / "secret").stat().st_mode & 0o777) == "0o600"
    sandbox.check_folder(d)  # the failed start's folder is still a sandbox's: the next up may use it


async def test_an_interrupted_up_leaves_no_daemon_running(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    task = asyncio.ensure_future(sandbox.aup(d, terminals=5, timeout=30))

    def hosts_started() -> bool:
        try:
            st = json.loads((d / sandbox.STATE).read_text())
            return all(h.get("pid") for h in st["hosts"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def started_or_failed() -> bool:
        assert not task.done(), task.exception() if task.done() else None
        return hosts_started()

    try:
        await until(started_or_failed, 30, interval=0.01, what="both hosts of the sandbox started")
        assert len(_daemons_of(d)) >= 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: _daemons_of(d) == [], 10, what="every daemon of the interrupted sandbox gone")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        with contextlib.suppress(sandbox.SandboxError):  # (no state file if the start failed early)
            sandbox.down(d, timeout=2)


def test_the_ours_check_needs_a_config_in_the_folder(tmp_path: Path) -> None:
    me = os.getpid()
    assert not sandbox._ours(tmp_path, me)
    assert not sandbox._ours(tmp_path, 0)


def test_a_start_that_failed_before_its_state_was_written_leaves_a_folder_up_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "sb"

    def no_space(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sandbox_files, "create_file", no_space)
    with pytest.raises(OSError):
        sandbox.up(d, terminals=2)
    assert (d / "cp.toml").exists() and not (d / sandbox.STATE).exists()
    sandbox.check_folder(d)  # its configs are the sandbox's own: not "a folder that is not a sandbox"
    assert _daemons_of(d) == []


def test_only_a_daemon_with_a_config_of_the_folder_is_the_sandboxs() -> None:
    """`down` signals a recorded pid only if it is still the sandbox's daemon: a program that
    merely names a file of the folder (an editor on cp.toml, hsbctl's --watch on ctl.toml), or a
    daemon of a sandbox nested in it, took a reused pid and would have been killed."""
    d = Path("/tmp/sbx-names")
    cp = f"/usr/bin/python3\0-m\0hsb.cp\0--config\0{d}/cp.toml\0--supervise\0".encode()
    host = f"/usr/bin/python3\0-m\0hsb.host\0--role\0active\0--config\0{d}/host-a.toml\0".encode()
    assert sandbox._names_config(d, cp) and sandbox._names_config(d, host)
    for stranger in (
        f"vim\0{d}/cp.toml\0",
        f"/usr/bin/python3\0-m\0hsb.ctl\0-c\0{d}/ctl.toml\0status\0--watch\0",
        f"/usr/bin/python3\0-m\0hsb.cp\0--config\0{d}/inner/cp.toml\0",
    ):
        assert not sandbox._names_config(d, stranger.encode()), stranger


def test_a_daemon_that_ends_between_the_two_looks_is_reported_with_its_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsbctl sandbox start-host` names the exit code of a daemon that exits at its start (76: refused
    as the active). Had it ended just after the first look (still running then) and before the
    second (a zombie now), the code was lost: "exited at start" without it."""
    from hsb import procstat

    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(76)"])
    deadline = time.monotonic() + 10
    while procstat.state(p.pid) != "Z":
        assert time.monotonic() < deadline, "the child never ended"
        time.sleep(0.01)
    real = sandbox._exit_code
    looks: list[int] = []

    def first_look_too_early(pid: int) -> int | None:
        looks.append(pid)
        return None if len(looks) == 1 else real(pid)  # the first look came before its end

    monkeypatch.setattr(sandbox, "_exit_code", first_look_too_early)
    err = sandbox._exited(tmp_path, "host-a", p.pid)
    assert err is not None and "exited with code 76 at start" in str(err), err
    p.returncode = 76  # (reaped by the look above: Popen must not wait for it again)
