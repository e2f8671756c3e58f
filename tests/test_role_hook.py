"""The role-change hook (hsb.host.hooks.RoleHook): real commands, run in the order of the
changes, and none left running when the host stops."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from hsb import procstat
from hsb.host.hooks import RoleHook

pytestmark = pytest.mark.timeout(30)


async def _until(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _script(tmp_path: Path) -> Path:
    """A hook that takes long for the role "standby" and records when each run ended."""
    s = tmp_path / "hook.py"
    s.write_text(
        "import sys, time\n"
        "role = sys.argv[1]\n"
        "time.sleep(0.5 if role == 'standby' else 0.0)\n"
        f"open({str(tmp_path / 'ended')!r}, 'a').write(role + '\\n')\n"
    )
    return s


async def test_hooks_finish_in_the_order_of_the_changes(tmp_path: Path) -> None:
    """standby, then active at once: each hook ran on its own, so the slow standby one finished
    last, and a hook moving an address left it on the wrong host."""
    hook = RoleHook(f"{sys.executable} {_script(tmp_path)}", timeout=10)
    hook.fire("standby", "x", 1, "test")
    hook.fire("active", "x", 2, "test")
    ended = tmp_path / "ended"
    await _until(lambda: ended.exists() and len(ended.read_text().split()) == 2, "two hooks")
    assert ended.read_text().split() == ["standby", "active"]
    await hook.close()


async def test_changes_that_come_while_a_hook_runs_wait_as_one_the_newest(tmp_path: Path) -> None:
    """Changes that flap while a hook runs (or hangs until its timeout) do not pile up runs: the
    newest waits, the ones it replaced are said in the log, and it is the last to run."""
    hook = RoleHook(f"{sys.executable} {_script(tmp_path)}", timeout=10)
    hook.fire("standby", "x", 1, "test")
    for epoch, role in enumerate(("active", "standby", "active", "standby", "active"), 2):
        hook.fire(role, "x", epoch, "test")
    ended = tmp_path / "ended"
    await _until(lambda: ended.exists() and len(ended.read_text().split()) == 2, "two hooks")
    await hook.close()
    assert ended.read_text().split() == ["standby", "active"] and hook.running is not None and hook.running.done()


async def test_a_hook_still_running_when_the_host_stops_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    s = tmp_path / "slow.py"
    s.write_text(f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    hook = RoleHook(f"{sys.executable} {s}", timeout=0.5)  # close() waits this long for it
    hook.fire("active", "x", 1, "test")
    await _until(lambda: pidfile.exists() and pidfile.read_text(), "the hook started")
    pid = int(pidfile.read_text())
    await hook.close()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return procstat.state(pid) == "Z"

    await _until(gone, "the hook's process gone")


async def test_a_fence_waiting_behind_a_running_hook_still_runs_when_the_host_stops(tmp_path: Path) -> None:
    """A host fenced (it stops acting as the active, then exits) while the hook of its last
    change still runs: the fence's run waits, and the stop that follows must not drop it, or a
    command that moved a virtual address here would never hear to take it away."""
    hook = RoleHook(f"{sys.executable} {_script(tmp_path)}", timeout=10)
    hook.fire("standby", "x", 1, "test")  # (slow: 0.5 s)
    hook.fire("active", "fenced", 2, "fenced by the CP")
    await hook.close()
    assert (tmp_path / "ended").read_text().split() == ["standby", "active"]


async def test_a_fence_behind_a_hook_that_hangs_still_runs_when_the_host_stops(tmp_path: Path) -> None:
    """The running hook hangs past the timeout: it is killed, and the fence's run still gets a
    timeout of its own (they shared one, and the fence never ran)."""
    s = tmp_path / "hook.py"
    s.write_text(
        "import sys, time\n"
        "state = sys.argv[2]\n"
        "time.sleep(60 if state == 'start' else 0.0)\n"
        f"open({str(tmp_path / 'ended')!r}, 'a').write(state + '\\n')\n"
    )
    hook = RoleHook(f"{sys.executable} {s}", timeout=0.5)
    hook.fire("active", "start", 1, "serving")  # hangs
    hook.fire("active", "fenced", 2, "fenced by the CP")
    await hook.close()
    assert (tmp_path / "ended").read_text().split() == ["fenced"]


def _state_script(tmp_path: Path) -> Path:
    """A hook that takes long for the state "serving" and records ROLE:STATE when each run ended."""
    s = tmp_path / "hook.py"
    s.write_text(
        "import sys, time\n"
        "time.sleep(0.5 if sys.argv[2] == 'serving' else 0.0)\n"
        f"open({str(tmp_path / 'ended')!r}, 'a').write(sys.argv[1] + ':' + sys.argv[2] + '\\n')\n"
    )
    return s


@pytest.mark.parametrize(
    "role,state",
    [("active", "stopping"), ("active", "not_serving"), ("standby", "stopping"), ("standby", "waiting_for_active")],
    ids=["stop", "handing_over", "demoted_by_the_stop", "demoted"],
)
async def test_a_change_taking_the_role_away_waiting_behind_a_running_hook_runs_at_the_stop(tmp_path: Path, role: str, state: str) -> None:
    """The active registers (its hook, moving a virtual address here, runs for a while) and is
    stopped meanwhile: the stop's `stopping` (a handover's `not_serving`, then `standby` once
    demoted: `stopping` when the stop's handover demoted it, HA.on_demoted, `waiting_for_active`
    at a switchover's) waits behind it, and the close that follows within milliseconds must run
    it after it, or the command never hears that this host no longer holds the address."""
    hook = RoleHook(f"{sys.executable} {_state_script(tmp_path)}", timeout=10)
    hook.fire("active", "serving", 1, "registered with the CP as the active")  # (slow: 0.5 s)
    hook.fire(role, state, 1, "normal termination")
    await hook.close()
    assert (tmp_path / "ended").read_text().split() == ["active:serving", f"{role}:{state}"]


async def test_a_change_to_act_as_the_active_waiting_at_the_stop_does_not_run(tmp_path: Path) -> None:
    """The host is going: a command told to take the address for it now would keep it."""
    hook = RoleHook(f"{sys.executable} {_state_script(tmp_path)}", timeout=10)
    hook.fire("active", "serving", 1, "registered with the CP as the active")  # (slow: 0.5 s)
    hook.fire("active", "established", 1, "acting as the active again")
    await hook.close()
    assert (tmp_path / "ended").read_text().split() == ["active:serving"]
