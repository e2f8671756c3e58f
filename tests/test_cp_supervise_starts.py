"""A supervised CP's worker as it starts (hsb.cp.supervise, `hsbcpd --supervise`): a start that
fails for a reason that may pass is tried again after a growing wait; a worker forked again
answers status and health while it recovers its journal, waits for ports the dead one still
holds, and serves on the certificates loaded before if they broke since. Real processes (hsbcpd
alone), and the port wait in process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import SECRET, addr, cp_config, until, wait_for
from tests.support.supervised import worker_of

pytestmark = pytest.mark.timeout(120)


# hsbcpd whose journal recovery fails (EIO) while the file named by FAIL_RECOVERY exists
FAILING_RECOVERY = """
import errno, os, sys
from hsb.cp import taking_over
real = taking_over.recover
def failing(*a, **kw):
    if os.path.exists(os.environ["FAIL_RECOVERY"]):
        raise OSError(errno.EIO, "Input/output error")
    return real(*a, **kw)
taking_over.recover = failing
from hsb.cp.main import main
main(sys.argv[1:])
"""


def test_a_worker_that_fails_at_start_is_started_again_after_a_growing_wait(supervised: Any, tmp_path: Path) -> None:
    """A start that fails for a reason that may pass (the journal's storage answers EIO): the
    worker exits 1 and the master starts another, after 0.1 s, 0.2 s, 0.4 s ... (up to 5 s),
    rather than ending with 1, which systemd answered with a new master, a new interpreter,
    every 100 ms for ever. Once the storage answers, the next worker serves."""
    from datetime import datetime

    from hsb.cp import supervise as sv

    assert [sv.failed_delay(n) for n in (1, 2, 3, 4, 6, 7, 20)] == [0.1, 0.2, 0.4, 0.8, 3.2, 5.0, 5.0]
    flag = tmp_path / "storage-fails"
    flag.touch()
    p = supervised(env={"FAIL_RECOVERY": str(flag)}, code=FAILING_RECOVERY)
    wait_for(lambda: len(p.events("cp_worker_failed")) >= 4, 30, what="four failed starts")
    failed = p.events("cp_worker_failed")[:4]
    assert [(e["exit"], e["failures"], e["delay_s"]) for e in failed] == [(1, 1, 0.1), (1, 2, 0.2), (1, 3, 0.4), (1, 4, 0.8)], failed
    started = p.events("cp_worker_started")
    assert all(e["restarts"] == 0 for e in started) and p.events("cp_worker_died") == []  # no crash: a start again
    waited = (datetime.fromisoformat(started[3]["timestamp"]) - datetime.fromisoformat(failed[2]["timestamp"])).total_seconds()
    assert waited >= 0.35, waited  # (the log's clock: the wait was kept)
    assert p.popen.poll() is None and "cannot open the CP journal" in p.log.read_text()
    flag.unlink()
    p.wait_event("cp_started", timeout=20)
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(10) == 0


# hsbcpd whose journal recovery waits while the file named by HOLD_RECOVERY exists (a slow recovery)
SLOW_RECOVERY = """
import os, sys, time
from hsb.cp import taking_over
real = taking_over.recover
def held(*a, **kw):
    deadline = time.monotonic() + 60
    while os.path.exists(os.environ["HOLD_RECOVERY"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(*a, **kw)
taking_over.recover = held
from hsb.cp.main import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("admin_host", ["127.0.0.1", "localhost"])
async def test_a_worker_forked_again_answers_status_and_health_while_it_recovers(supervised: Any, tmp_path: Path, admin_host: str) -> None:
    """A worker forked again after a crash took the journal over before it started its admin
    link and /health: the master held those listeners, so `hsbctl status` and keepalived's
    track script waited unanswered through the whole recovery (any other start answers them
    meanwhile: `take_over`). Here the recovery is held; both answer, the CP taking over. Also
    with the admin and http addresses given as a host name, which each worker binds itself."""
    import tomllib

    from hsb.wire.client import LinkClosed, request
    from tests.support.procs import SECRET, addr, free_port, http_get

    hold = tmp_path / "hold-recovery"
    listen = {"admin_listen": f"{admin_host}:{free_port()}", "http_listen": f"{admin_host}:{free_port()}"}
    p = supervised(env={"HOLD_RECOVERY": str(hold)}, code=SLOW_RECOVERY, **listen)
    p.wait_event("cp_started", timeout=15)
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    master = p.popen.pid
    first = worker_of(master)
    hold.write_text("")
    os.kill(first, signal.SIGKILL)
    p.wait_event("cp_worker_started", timeout=15, restarts=1)
    h, port = addr(c["admin_listen"])

    async def status() -> dict[str, Any] | None:
        try:
            ans = await request(h, port, SECRET, {"t": "status"}, timeout=1.0)
        except (OSError, TimeoutError, LinkClosed):
            return None
        return ans.get("data")

    deadline = time.monotonic() + 20
    while (st := await status()) is None:
        assert time.monotonic() < deadline, "no status answered while the worker forked again recovers"
    assert st["cp_state"] == "taking_over" and st["supervisor"]["restarts"] == 1, st
    # /health: bound after the admin link, and it may wait for the dead worker's port (`_bind`)
    while (got := await asyncio.to_thread(http_get, c["http_listen"], "/health"))[0] == 0:
        assert time.monotonic() < deadline, "/health not answered while the worker forked again recovers"
    code, body = got
    assert code == 200 and json.loads(body)["cp_state"] == "taking_over", (code, body)
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hsb.ctl", "--cp", c["admin_listen"], "--secret-file", str(tmp_path / "secret"), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = json.loads(r.stdout)["cp"]["error"]
    assert err == f"no CP serves: cp at {c['admin_listen']} taking_over", err
    assert len(p.events("journal_recovered")) == 1  # all this while the recovery was held
    hold.unlink()
    await until(lambda: len(p.events("cp_started")) == 2, 20, what="the worker forked again serving")
    st = await status()
    assert st is not None and st["cp_state"] == "serving", st


async def test_a_cp_forked_again_waits_for_its_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead CP's sockets may still be closing when the next one binds: EADDRINUSE is waited
    out (BIND_WAIT_S at most), but only by a CP its master started again."""
    import errno

    from hsb.config import load
    from hsb.cp import listeners
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    cfg = load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig)
    s = srv.CPServer(cfg, b"s" * 32, str(tmp_path / "cp.toml"))
    tries: list[int] = []

    async def busy_twice() -> str:
        tries.append(1)
        if len(tries) <= 2:
            raise OSError(errno.EADDRINUSE, "address already in use")
        return "bound"

    s.supervisor = {"master_pid": 1, "restarts": 1, "last_death": None}
    assert await s._bind(busy_twice) == "bound" and len(tries) == 3
    tries.clear()
    s.supervisor = {"master_pid": 1, "restarts": 0, "last_death": None}  # the first start: another hsbcpd
    with pytest.raises(OSError):
        await s._bind(busy_twice)
    assert len(tries) == 1
    monkeypatch.setattr(listeners, "BIND_WAIT_S", 0.05)
    s.supervisor = {"master_pid": 1, "restarts": 2, "last_death": None}

    async def always_busy() -> str:
        raise OSError(errno.EADDRINUSE, "address already in use")

    t0 = time.monotonic()
    with pytest.raises(OSError):
        await s._bind(always_busy)
    assert time.monotonic() - t0 < 2.0


async def test_a_worker_forked_again_on_certificates_broken_since_serves_on_those_loaded_before(supervised: Any, tmp_path: Path) -> None:
    """The certificates were checked at the start; a worker forked again after a crash reads them
    again. Broken meanwhile (a renewal copied file by file, a key left readable by others), that
    worker ended with exit 78, on which systemd does not restart the unit: a crash turned into
    an outage until someone stepped in. It serves on the certificates the worker before it
    loaded, says so in one line, and a reload takes the files once they are fixed."""
    import tomllib

    from hsb.ctl.tls_cmd import make_ca_and_certs
    from hsb.term.connector import tls_context
    from hsb.wire.client import request

    tls = tmp_path / "tls"
    make_ca_and_certs(tls, ["cp", "hsbctl"])
    p = supervised(tls={"ca_file": str(tls / "ca.pem"), "cert_file": str(tls / "cp.pem"), "key_file": str(tls / "cp.key")})
    p.wait_event("cp_started", timeout=15)
    good = (tls / "cp.pem").read_bytes()
    (tls / "cp.pem").write_text("not a certificate\n")
    os.kill(worker_of(p.popen.pid), signal.SIGKILL)
    ev = p.wait_event("tls_files_broken_since", timeout=15)
    assert "cert_file" in ev["error"], ev
    await until(lambda: len(p.events("cp_started")) >= 2, 15, what="the next worker serving")
    assert p.popen.poll() is None
    c = tomllib.loads((tmp_path / "cp.toml").read_text())["cp"]
    ctx = tls_context(str(tls / "ca.pem"), str(tls / "hsbctl.pem"), str(tls / "hsbctl.key"))
    st = await request(*addr(c["admin_listen"]), SECRET, {"t": "status"}, ssl=ctx)  # its certificate still the one loaded
    assert st["data"]["tls"]["cert_file"] == str(tls / "cp.pem"), st["data"]["tls"]
    (tls / "cp.pem").write_bytes(good)  # fixed: a reload reads the files again
    os.kill(p.popen.pid, signal.SIGHUP)
    p.wait_event("tls_reloaded", timeout=15)
    out = (tmp_path / "cp.log").read_text()
    assert "Traceback" not in out, out[-2000:]
