"""A bench stopped by SIGTERM or SIGINT stops its sandbox's daemons, as a normal exit does: they
run in sessions of their own, and a bench killed by the signal's default action left them
running (one pair ran idle for 38 minutes beside later benches). A bench-like program goes
through the benches' entry (bench/_entry.py run_or_render) with a sandbox up, and is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hsb import procstat
from hsb.ctl import sandbox
from tests.support.procs import wait_for

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent

# a bench as bench/*.py are: run_or_render, a sandbox up, its teardown in a `finally`; "bare":
# one with no such `finally` (what is left is stopped by the net under them)
BENCH = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from _sandbox import run_or_render, sandbox, sandbox_down

d, ready, bare = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "bare"

async def amain(a):
    await sandbox.aup(d, terminals=2, timeout=30)
    if bare:
        ready.touch()
        await asyncio.sleep(600)
    try:
        ready.touch()
        await asyncio.sleep(600)
    finally:
        sandbox_down(d)
    return 0

class A:
    render = None
    command = "interrupted bench"

sys.exit(run_or_render(A(), "unused", lambda saved: "", amain))
"""


def _daemons_left(d: Path) -> list[int]:
    st = sandbox.load_state(d)
    pids = {p for proc in [st["cp"], *st["hosts"].values()] for p in proc.get("pids", [proc["pid"]]) if p}
    left = []
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        if procstat.state(pid) not in ("Z", None):  # (a zombie waits for init to reap it: gone)
            left.append(pid)
    return left


@pytest.mark.parametrize(("sig", "kind"), [(signal.SIGTERM, "teardown"), (signal.SIGINT, "bare")], ids=["sigterm-teardown", "sigint-bare"])
def test_a_stopped_bench_leaves_no_daemon_of_its_sandbox(tmp_path: Path, sig: int, kind: str) -> None:
    prog = tmp_path / "bench_like.py"
    prog.write_text(BENCH.format(bench=str(REPO / "bench")))
    d, ready, log = tmp_path / "sb", tmp_path / "ready", tmp_path / "bench.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:  # (its own session: a SIGINT from the test's terminal does not reach it)
        bench = subprocess.Popen([sys.executable, str(prog), str(d), str(ready), kind], stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        wait_for(lambda: ready.exists() or bench.poll() is not None, 40, what="the bench's sandbox up")
        assert ready.exists(), log.read_text()[-3000:]
        assert _daemons_left(d), "the sandbox runs"
        bench.send_signal(sig)
        code = bench.wait(timeout=20)
        wait_for(lambda: not _daemons_left(d), 5, what=f"every daemon of the sandbox gone (left: {_daemons_left(d)})")
        assert code == 128 + sig, (code, log.read_text()[-3000:])
        assert f"stopped by {signal.Signals(sig).name}" in log.read_text()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)
        if (d / sandbox.STATE).exists():
            sandbox.down(d, timeout=2)


def test_the_signals_are_the_defaults_again_once_the_bench_has_measured(tmp_path: Path) -> None:
    """After run_or_render returns (the sandboxes down), a SIGTERM ends the bench as the default
    action does; it raised the unwinding's interrupt wherever it landed, a traceback, exit 1."""
    prog = f"""
import signal, sys
sys.path.insert(0, {str(REPO / "bench")!r})
from _sandbox import run_or_render

async def amain(a):
    return 0

class A:
    render = None
    command = "a bench"

assert run_or_render(A(), "unused", lambda saved: "", amain) == 0
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True True", out.stdout


# a bench as above, killed (SIGKILL: no `finally`, no handler) while its sandbox starts: the
# state file's write that would name the daemon just spawned (`block`: the first, for hsbcpd, or
# the second, for host-a) never returns. Each pid spawned is noted in `spawned` as it is had
SPAWNING = """
import sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from _sandbox import run_or_render, sandbox

d, ready, spawned, block = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
spawn, save, saves = sandbox._spawn, sandbox.save_state, []

def noting_spawn(*args, **kw):
    pid = spawn(*args, **kw)
    with open(spawned, "a") as f:
        f.write(f"{{pid}}\\n")
    return pid

def save_state(*args, **kw):
    saves.append(1)
    if len(saves) == block:
        ready.touch()
        time.sleep(600)
    return save(*args, **kw)

sandbox._spawn, sandbox.save_state = noting_spawn, save_state

async def amain(a):
    await sandbox.aup(d, terminals=2, timeout=30)
    return 0

class A:
    render = None
    command = "a bench killed while it spawns"

sys.exit(run_or_render(A(), "unused", lambda saved: "", amain))
"""


@pytest.mark.parametrize("block", [1, 2], ids=["hsbcpd-unrecorded", "host-a-unrecorded"])
def test_a_bench_killed_while_its_sandbox_starts_leaves_no_daemon(tmp_path: Path, block: int) -> None:
    """SIGKILL runs no teardown: the daemons the bench spawned (in sessions of their own) end
    with it all the same, the one its state file does not name yet too."""
    prog = tmp_path / "spawning_bench.py"
    prog.write_text(SPAWNING.format(bench=str(REPO / "bench")))
    d, ready, spawned, log = tmp_path / "sb", tmp_path / "ready", tmp_path / "spawned", tmp_path / "bench.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        bench = subprocess.Popen(
            [sys.executable, str(prog), str(d), str(ready), str(spawned), str(block)], stdout=out, stderr=out, env=env, start_new_session=True
        )
    pids: list[int] = []
    try:
        wait_for(lambda: ready.exists() or bench.poll() is not None, 40, what="the bench at its state file's write")
        assert ready.exists(), log.read_text()[-3000:]
        pids = [int(p) for p in spawned.read_text().split()]
        assert len(pids) == block and all(sandbox._ours(d, p) for p in pids), (pids, log.read_text()[-3000:])
        bench.kill()
        bench.wait(timeout=10)
        wait_for(
            lambda: not [p for p in pids if sandbox._ours(d, p)],
            10,
            what=f"the daemons it spawned gone (left: {[p for p in pids if sandbox._ours(d, p)]})",
        )
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)
        for pid in pids:
            if sandbox._ours(d, pid):
                os.kill(pid, signal.SIGKILL)
