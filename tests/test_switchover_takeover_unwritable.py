"""A planned switchover while the takeover file cannot be written (docs/operations.md §8).

An idle pair writes nothing to the takeover file, so one made immutable (`chattr +i`), read-only
or on a hung mount since its last write still says established. Handed over, the new active's
batch writes all failed (`batch_write_failed`), the pair was left without hot standby, and
`hsbctl switchover` waited its whole `--timeout` to say only "did not complete". The active
now checks the file first (under the storage's deadline) and refuses: hsbctl says so at once,
naming the file, the host and the fix, and the pair serves on as before.

Real processes (`hsbctl sandbox`, `hsbctl switchover`) for the immutable file; the hung mount
in this process (tests/support/inproc.py), its open held by the storage fault hook. And when the
roles did swap and hot standby does not come back (the new active's batch writes failing),
hsbctl's timeout line says the roles swapped and why (the daemons' answers faked)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from hsb.takeover.faults import Faults
from tests.support.inproc import hot_standby, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(90)


def hsbctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.ctl", *args], capture_output=True, text=True, timeout=timeout)


def test_a_switchover_onto_an_immutable_takeover_file_is_refused_at_once_and_the_pair_serves_on(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    up = hsbctl("sandbox", "up", "--dir", str(d), "--terminals", "5")
    assert up.returncode == 0, up.stderr
    takeover = d / "takeover.dat"
    ctl = ("--config", str(d / "ctl.toml"))
    try:
        deadline = time.monotonic() + 20
        while (st := hsbctl(*ctl, "status", timeout=15)).returncode != 0:
            assert time.monotonic() < deadline, st.stdout
        r = subprocess.run(["chattr", "+i", str(takeover)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(
                f"chattr +i does not work here ({(r.stderr or r.stdout).strip()}): it needs root, e2fsprogs' chattr and a file system with the immutable flag"
            )
        t0 = time.monotonic()
        sw = hsbctl(*ctl, "switchover", "--yes", "--timeout", "30")
        took = time.monotonic() - t0
        assert sw.returncode == 1, (sw.stdout, sw.stderr)
        assert took < 15, f"hsbctl switchover took {took:.1f}s: {sw.stderr}"
        err = sw.stderr.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("error: planned switchover refused: takeover file "), err
        for said in (str(takeover), "cannot be opened for writing by host-a", f"chattr -i -a {takeover}", "host-a is still the active"):
            assert said in err[0], (said, err[0])
        # the pair serves on as before: host-a the active, hot standby established, no switch
        st = hsbctl(*ctl, "status", timeout=15)
        assert st.returncode == 0, st.stdout
        assert "epoch 1 " in st.stdout and "last switchover" not in st.stdout, st.stdout
        assert any(ln.split()[:3] == ["host-a", "ACTIVE", "established"] for ln in st.stdout.splitlines()), st.stdout
    finally:
        subprocess.run(["chattr", "-i", str(takeover)], check=False, capture_output=True)
        hsbctl("sandbox", "down", "--dir", str(d))
    assert "batch_write_failed" not in (d / "host-b.log").read_text()


async def test_a_switchover_while_the_takeover_storage_hangs_is_refused_naming_it(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        hook = Faults(ops=frozenset({"writable check"}))
        a.takeover.store.faults = hook
        hook.hold()  # (the open never returns: a hung NFS mount)
        ended = a.ha.status()["switchovers_ended"]
        try:
            a.ha.post("switchover")
            await until(lambda: a.ha.status()["switchovers_ended"] > ended, "the switchover ended", timeout=20)
        finally:
            hook.release()
        why = a.ha.last_error or ""
        assert why.startswith("planned switchover refused: takeover storage not responding"), why
        assert "on host-a" in why and str(a.cfg.takeover.path) in why, why
        assert a.ha.role == "active" and b.ha.role == "standby" and cp.cp is not None and cp.cp.epoch == 1
        await until(lambda: a.takeover.store.responding and hot_standby(a, b), "hot standby as before")
        assert [h.ha.role for h in (a, b)] == ["active", "standby"]


def test_a_switchover_whose_new_active_cannot_write_its_batch_says_the_roles_swapped_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Handed over, and then the new active's batch writes fail (its own access to the file, or
    the storage failing after the check): hsbctl waits its --timeout for hot standby and said
    only "did not complete", as if the roles had not swapped; now it says they did, and why hot
    standby is not back (the hosts' states and last errors)."""
    from hsb.ctl import switchover as switchover_mod
    from hsb.ctl.target import Target
    from hsb.ctl.verdict import summarize
    from tests.support.procs import write_secret

    secret = write_secret(tmp_path)
    calls = 0
    failed = "batch write failed: [Errno 1] Operation not permitted: '/srv/hsb/takeover.dat'"

    def host(who: str, role: str, epoch: int, state: str, **kw: Any) -> dict[str, Any]:
        return {
            "reachable": True,
            "name": who,
            "addr": f"{who}:1",
            "pid": 1,
            "role": role,
            "state": state,
            "serving": role == "active",
            "epoch": epoch,
            **kw,
        }

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        cp = {"reachable": True, "name": "cp", "addr": "cp:1", "role": "cp", "state": "serving", "epoch": 1}
        if calls == 1:
            hosts = [host("host-a", "active", 1, "established", switchovers_ended=0), host("host-b", "standby", 1, "established")]
            cp.update(active={"name": "host-a"}, standby={"name": "host-b"})
        else:
            hosts = [host("host-a", "standby", 2, "awaiting_batch", switchovers_ended=0), host("host-b", "active", 2, "serving", last_error=failed)]
            cp.update(epoch=2, active={"name": "host-b"}, standby={"name": "host-a"})
        return summarize(cp, hosts)

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover from host-a started"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 1.0) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: switchover did not complete within 1s: the roles swapped (host-b is the active)"), err
    assert f"host-b: {failed}" in err[0] and "host-a standby/awaiting_batch" in err[0], err
