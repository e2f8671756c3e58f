"""The keepalived notify script shipped in configs/keepalived/, run with stand-ins for systemctl and
logger: whatever the state, it records it and starts hsbcpd again if its unit failed (after
reset-failed: a unit that hit a limit would not start); then it wakes the unit's main process.
(A machine without hsbcpd is in FAULT for keepalived, so "start it when MASTER" never came.) An
hsbcpd stopped by hand (its unit inactive, not failed) is left stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsb.cli import NOT_RESTARTED

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("state", ["FAULT", "BACKUP", "MASTER"])
def test_the_notify_script_starts_a_failed_cp_in_any_state_and_wakes_the_running_one(tmp_path: Path, state: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    main = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGUSR1, lambda *a: exit(42)); time.sleep(30)"])
    try:
        (bin_dir / "systemctl").write_text(
            "#!/bin/sh\n"
            f'echo "$*" >> {calls}\n'
            'case "$*" in\n'
            "  *is-failed*) exit 0 ;;\n"  # failed (a start limit hit, say)
            f"  *MainPID*) echo {main.pid} ;;\n"
            "esac\n"
        )
        (bin_dir / "logger").write_text("#!/bin/sh\nexit 0\n")
        for f in bin_dir.iterdir():
            f.chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HSB_RUN_DIR": str(tmp_path / "run")}
        # the stand-in process must have its USR1 handler before it is signalled
        deadline = time.monotonic() + 10
        while not _catches_usr1(main.pid):
            assert time.monotonic() < deadline, "the stand-in main process never set its handler"
            time.sleep(0.01)
        r = subprocess.run(["sh", str(REPO / "configs" / "keepalived" / "hsb-cp-notify"), "INSTANCE", "hsb_cp", state, "100"], env=env, timeout=10)
        assert r.returncode == 0
        assert (tmp_path / "run" / "cp.state").read_text() == f"{state}\n"
        done = calls.read_text().splitlines()
        assert "reset-failed hsbcpd" in done and "start hsbcpd" in done, done
        assert main.wait(10) == 42, "the unit's main process was not woken (SIGUSR1)"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()


def _catches_usr1(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (10 - 1)))  # SIGUSR1 is 10
    return False


def test_the_notify_script_leaves_a_cp_stopped_by_hand_stopped(tmp_path: Path) -> None:
    """`systemctl stop hsbcpd` (maintenance): its track script then fails and keepalived calls
    the script with FAULT. Starting it again would undo the operator's stop."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in\n'
        "  *is-failed*) exit 1 ;;\n"  # inactive: stopped, not failed
        "  *is-active*) exit 3 ;;\n"
        "  *MainPID*) echo 0 ;;\n"
        "esac\n"
    )
    (bin_dir / "logger").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HSB_RUN_DIR": str(tmp_path / "run")}
    r = subprocess.run(["sh", str(REPO / "configs" / "keepalived" / "hsb-cp-notify"), "INSTANCE", "hsb_cp", "FAULT", "100"], env=env, timeout=10)
    assert r.returncode == 0
    assert (tmp_path / "run" / "cp.state").read_text() == "FAULT\n"
    done = calls.read_text().splitlines()
    assert not [c for c in done if c.startswith(("start", "restart", "reset-failed"))], done


def _stand_ins(tmp_path: Path, answers: str) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in\n' + answers + "esac\n")
    (bin_dir / "logger").write_text(f'#!/bin/sh\necho "logger $*" >> {calls}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HSB_RUN_DIR": str(tmp_path / "run")}, calls


@pytest.mark.parametrize("code", NOT_RESTARTED["hsbcpd"])
def test_the_notify_script_leaves_a_cp_failed_on_its_journal_or_config_failed(tmp_path: Path, code: int) -> None:
    """The statuses the unit does not restart: a usage error (2), a damaged journal (65), a start
    that cannot succeed here (73: a port taken, the journal's permissions), superseded (75) or a
    bad config (78): starting it again at every keepalived change would stop the same way (the
    damaged journal after taking a generation); left failed, said."""
    env, calls = _stand_ins(
        tmp_path, f"  *is-failed*) exit 0 ;;\n  *ExecMainStatus*) echo {code} ;;\n  *is-active*) exit 3 ;;\n  *MainPID*) echo 0 ;;\n"
    )
    r = subprocess.run(["sh", str(REPO / "configs" / "keepalived" / "hsb-cp-notify"), "INSTANCE", "hsb_cp", "MASTER", "100"], env=env, timeout=10)
    assert r.returncode == 0
    done = calls.read_text().splitlines()
    assert not [c for c in done if c.startswith(("start", "restart", "reset-failed"))], done
    assert any(c.startswith("logger") and f"exit {code}" in c for c in done), done


def test_the_notify_script_does_not_signal_a_cp_still_starting(tmp_path: Path) -> None:
    """An hsbcpd still starting (activating: its handlers not set yet) would be ended by SIGUSR1's
    default action; it reads the state file at its start, so it is not signalled."""
    main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # SIGUSR1: the default action
    try:
        env, calls = _stand_ins(tmp_path, f"  *is-failed*) exit 1 ;;\n  *is-active*) exit 3 ;;\n  *MainPID*) echo {main.pid} ;;\n")
        r = subprocess.run(["sh", str(REPO / "configs" / "keepalived" / "hsb-cp-notify"), "INSTANCE", "hsb_cp", "MASTER", "100"], env=env, timeout=10)
        assert r.returncode == 0
        assert (tmp_path / "run" / "cp.state").read_text() == "MASTER\n"
        assert main.poll() is None, "the starting process was signalled"
    finally:
        main.kill()
        main.wait()


def test_runs_at_once_leave_the_state_of_the_last_transition(tmp_path: Path) -> None:
    """keepalived starts a notify run per transition without waiting for the one before: BACKUP's
    run, slow here (its mkdir), finished after MASTER's, which keepalived started 0.3 s later, and
    its rename overwrote MASTER (the rename that finished last won). Now one run writes at a time
    (flock) and a run started before the one that wrote last writes nothing; a later run writes."""
    import shutil

    env, calls = _stand_ins(tmp_path, "  *is-failed*) exit 1 ;;\n  *is-active*) exit 3 ;;\n  *MainPID*) echo 0 ;;\n")
    mkdir = tmp_path / "bin" / "mkdir"
    mkdir.write_text(f'#!/bin/sh\n[ -n "$SLOW" ] && sleep 1.5\nexec {shutil.which("mkdir")} "$@"\n')
    mkdir.chmod(0o755)
    script = str(REPO / "configs" / "keepalived" / "hsb-cp-notify")
    backup = subprocess.Popen(["sh", script, "INSTANCE", "hsb_cp", "BACKUP", "100"], env={**env, "SLOW": "1"})
    try:
        time.sleep(0.3)
        master = subprocess.run(["sh", script, "INSTANCE", "hsb_cp", "MASTER", "100"], env=env, timeout=10)
        assert master.returncode == 0
        assert (tmp_path / "run" / "cp.state").read_text() == "MASTER\n"
        assert backup.wait(10) == 0
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert (tmp_path / "run" / "cp.state").read_text() == "MASTER\n"  # not the late BACKUP
    said = [c for c in calls.read_text().splitlines() if c.startswith("logger")]
    assert any("is BACKUP, but a later change is written already" in c for c in said), said
    assert not list((tmp_path / "run").glob("cp.state.[0-9]*")), "a temporary file was left"
    fault = subprocess.run(["sh", script, "INSTANCE", "hsb_cp", "FAULT", "100"], env=env, timeout=10)
    assert fault.returncode == 0 and (tmp_path / "run" / "cp.state").read_text() == "FAULT\n"


def test_two_runs_started_in_one_clock_tick_are_ordered_by_pid(tmp_path: Path) -> None:
    """The runs are ordered by their start time in clock ticks (10 ms): two transitions within
    one tick compared equal, so the earlier run, finishing last, overwrote the later one's state.
    Within a tick the later fork's higher pid decides; a run's own record carries its pid."""
    env, calls = _stand_ins(tmp_path, "  *is-failed*) exit 1 ;;\n  *is-active*) exit 3 ;;\n  *MainPID*) echo 0 ;;\n")
    script = str(REPO / "configs" / "keepalived" / "hsb-cp-notify")
    state = tmp_path / "run" / "cp.state"

    def run(to: str, born: str | None = None) -> None:
        extra = {"HSB_NOTIFY_BORN": born} if born is not None else {}
        assert subprocess.run(["sh", script, "INSTANCE", "hsb_cp", to, "100"], env={**env, **extra}, timeout=10).returncode == 0

    run("BACKUP")  # a real run: its record is the boot, its start tick and its pid
    boot, tick, pid = (tmp_path / "run" / "cp.state.born").read_text().split()
    assert int(tick) > 0 and int(pid) > 0 and boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    t = int(tick) + 500  # (later than that run)
    run("MASTER", f"{boot} {t} 2000")
    run("BACKUP", f"{boot} {t} 1990")  # the same tick, forked before MASTER's run: late, not written
    assert state.read_text() == "MASTER\n"
    assert "is BACKUP, but a later change is written already" in calls.read_text()
    run("FAULT", f"{boot} {t} 2010")  # the same tick, forked after: written
    assert state.read_text() == "FAULT\n"
    run("BACKUP", f"{boot} {t - 1} 9000")  # an earlier tick, whatever its pid: not written
    assert state.read_text() == "FAULT\n"
