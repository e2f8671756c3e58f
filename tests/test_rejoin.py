"""A host started with --role active while the other host is the active rejoins as the standby
(hsb.host.rejoin): the unit `hsbd@active` restarted after its host handed over (a restart, a
reboot, an upgrade) brings the pair back to hot standby with nothing to do; `--no-rejoin`
keeps the strict start (exit 76). Real processes from the sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.cli import EXIT_NOT_ACTIVE
from hsb.ctl import sandbox
from tests.support.procs import log_events, until
from tests.support.sandboxed import active_names, assert_clean, ctl, load_with, pid_of, status, wait_status


def _host(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in st["hosts"] if h.get("name") == name)


@pytest.mark.timeout(120)
async def test_the_active_restarted_after_its_handover_rejoins_as_the_standby(sb: Any) -> None:
    """host-a, the active, stops cleanly (SIGTERM: it hands over to host-b); started again with
    --role active, as systemd starts `hsbd@active`, the CP refuses it the role and it carries
    on as the standby, on the same process: hot standby is established again, no terminal is
    disconnected, and status says it runs as the standby though started as the active. With
    --no-rejoin it exits 76 as before."""
    info = await sb(terminals=20)
    d = Path(info["dir"])
    a_pid = pid_of(info, "host-a")
    rejoined: dict[str, Any] = {}

    async def handover_then_restart() -> None:
        await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == 20, what="standby sessions")
        os.kill(a_pid, signal.SIGTERM)  # a clean stop hands over
        await wait_status(info, lambda s: active_names(s) == ["host-b"], what="host-b active")
        await until(lambda: not sandbox._alive(a_pid), 15, what="host-a gone")
        pid = sandbox.start_host(d, "host-a", "active")  # (the unit's role, as systemd starts it)
        st = await wait_status(
            info,
            lambda s: s["established"] and (s["cp"].get("standby") or {}).get("name") == "host-a" and _host(s, "host-a").get("established"),
            what="hot standby again with host-a the standby",
        )
        rejoined.update(pid=pid, status=st)

    report = await load_with(info, handover_then_restart, terminals=20, rate=100)
    assert_clean(report)  # nothing lost, no terminal disconnected, no session closed
    st = rejoined["status"]
    a, b = _host(st, "host-a"), _host(st, "host-b")
    assert st["cp"]["active"]["name"] == "host-b" and st["cp"]["standby"]["name"] == "host-a", st["cp"]
    assert a["role"] == "standby" and a["started_as"] == "active" and a["rejoined_as_standby_of"] == "host-b", a
    assert a["pid"] == rejoined["pid"] and sandbox._alive(rejoined["pid"])  # the process that was started: no exit, no restart
    assert b["role"] == "active" and b["established"] and b["counters"]["two_actives_claimed"] == 0, b
    events = log_events(d / "host-a.log")
    ev = [e for e in events if e.get("event") == "rejoining_as_standby"]
    assert len(ev) == 1 and ev[0]["active"] == "host-b", ev
    assert [e for e in events if e.get("event") in ("start_refused", "fenced")] == []
    assert [e["code"] for e in events if e.get("event") == "host_exit"] == []
    # hsbctl status: exit 0, and host-a's line says that its unit's role is not the one it holds
    r = ctl(info, "status")
    assert r.returncode == 0, (r.stdout, r.stderr)
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("host-a"))
    assert "STANDBY" in line and "(unit role active: rejoined as the standby)" in line, r.stdout
    b_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("host-b"))
    assert "unit role" not in b_line, r.stdout

    # the strict start: host-a stopped (a standby's stop is harmless), then started as the active
    # with --no-rejoin while host-b is the active: refused, exit 76, as the unit's
    # RestartPreventExitStatus expects
    os.kill(rejoined["pid"], signal.SIGTERM)
    await until(lambda: not sandbox._alive(rejoined["pid"]), 15, what="host-a stopped")
    cfg = next(h["config"] for h in info["hosts"] if h["name"] == "host-a")
    loop = asyncio.get_running_loop()
    r2 = await loop.run_in_executor(
        None,
        lambda: subprocess.run(
            [sys.executable, "-m", "hsb.host", "--role", "active", "--no-rejoin", "--config", cfg], capture_output=True, text=True, timeout=30
        ),
    )
    assert r2.returncode == EXIT_NOT_ACTIVE, r2.stderr[-2000:]
    last = r2.stderr.strip().splitlines()[-1]
    assert "host-b is already the active host" in last and "--role standby" in last, last
    assert active_names(await status(info)) == ["host-b"]


class _Srv:
    def __init__(self, rejoin: bool) -> None:
        self.rejoin = rejoin
        self.rejoined_from: str | None = None
        self.states = 0

    def on_state_change(self) -> None:
        self.states += 1


class _HA:
    """What `refused_at_start` touches of hsb.host.ha.HA."""

    def __init__(self, rejoin: bool) -> None:
        self.srv = _Srv(rejoin)
        self.role = "active"
        self.state = "starting"
        self.failed: list[tuple[int, str, str]] = []

    def fail(self, code: int, msg: str, event: str) -> None:
        self.failed.append((code, msg, event))


@pytest.mark.timeout(10)
def test_a_refusal_at_the_start_rejoins_once_and_the_strict_start_exits_76() -> None:
    """The active's name comes from the CP's `active` field (else its message's first word, a CP
    of before); a second refusal as the active (it cannot happen: the role never goes back to
    active but by the CP's grant) is no loop: it exits 76; `--no-rejoin` exits 76 at once."""
    from hsb.host.rejoin import refused_at_start

    ha: Any = _HA(rejoin=True)
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3); ...", "active": "host-b"})
    assert ha.role == "standby" and ha.srv.rejoined_from == "host-b" and ha.failed == [] and ha.srv.states == 1
    ha.role = "active"
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)"})
    assert ha.failed == [(EXIT_NOT_ACTIVE, "refused by the CP: host-b is already the active host (epoch 3)", "start_refused")]
    old_cp: Any = _HA(rejoin=True)
    refused_at_start(old_cp, {"t": "error", "code": "active_exists", "msg": "host-c held the active role at epoch 4 when the CP restarted; ..."})
    assert old_cp.role == "standby" and old_cp.srv.rejoined_from == "host-c"
    strict: Any = _HA(rejoin=False)
    refused_at_start(strict, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)", "active": "host-b"})
    assert strict.role == "active" and strict.srv.rejoined_from is None and [f[0] for f in strict.failed] == [EXIT_NOT_ACTIVE]


def _unstarted_host(tmp_path: Path, role: str) -> Any:
    """hsbd's own HostServer for `role`, built and not started (no CP, no peer): its HA is driven
    by hand."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    return HostServer(load(p, HostConfig), role, SECRET, EchoService("host-a"), str(p))


@pytest.mark.timeout(10)
async def test_an_active_still_starting_writes_no_batch_and_a_refusal_then_rejoins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole site restarted, the CP's recorded active the other host: host-a (hsbd@active,
    still `starting`) got the standby's STANDBY STARTUP before the CP's answer. It wrote a batch
    to the shared file for a role it did not hold (state batch_writing), and the CP's refusal,
    no longer at `starting`, was exit 76: the pair had no standby. It now writes nothing until
    registered as the active, and the refusal rejoins as the standby."""
    srv = _unstarted_host(tmp_path, "active")
    written: list[int] = []

    async def batch_write(partner: int, *args: Any, **kw: Any) -> int:
        written.append(partner)
        return 1

    monkeypatch.setattr(srv.takeover, "batch_write", batch_write)
    ha = srv.ha
    await ha.peer_standby_startup({"t": "standby_startup", "startup_id": 42, "name": "host-b"})
    assert written == [] and ha.state == "starting" and ha.partner_startup_id is None, (written, ha.state)
    refusal = {"t": "error", "code": "active_exists", "msg": "host-b held the active role at epoch 4 when the CP restarted", "active": "host-b"}
    srv._cp_frame(refusal)
    await ha.run_cycle()
    assert ha.exit is None and srv.exit_code is None, ha.exit
    assert ha.role == "standby" and srv.rejoined_from == "host-b" and ha.state == "starting"


class _Outbound:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


@pytest.mark.timeout(10)
async def test_a_standby_asks_an_active_for_a_batch_once_it_is_registered(tmp_path: Path) -> None:
    """A standby waiting for an active does not send STANDBY STARTUP to one whose hello or
    heartbeat says `starting` (the CP may refuse it the role); it does at its first heartbeat
    past `starting`, or at its ACTIVE STARTUP (sent once registered), even while its last
    heartbeat still says `starting`."""
    from hsb.host.states import WAITING

    srv = _unstarted_host(tmp_path, "standby")
    ha = srv.ha
    out = _Outbound()
    srv.peer.up, srv.peer.outbound = True, out
    ha.registered = True
    ha.set_state(WAITING, "registered at the CP as standby (test)")

    async def hello(instance: str, state: str) -> None:
        srv.peer.peer_hello = {"t": "peer_hello", "name": "host-b", "role": "active", "state": state, "instance": instance, "epoch": 0}
        await ha.peer_peer_hello(srv.peer.peer_hello)

    async def hb(instance: str, state: str) -> None:  # (PeerLink keeps its peer_hello current from each)
        assert srv.peer.peer_hello is not None
        srv.peer.peer_hello = {**srv.peer.peer_hello, "state": state}
        await ha.ev_peer_frame({"t": "hb", "role": "active", "state": state, "instance": instance})

    await hello("i1", "starting")
    await hb("i1", "starting")
    assert out.sent == [] and ha.state == WAITING, out.sent
    await hb("i1", "serving")  # registered, its ACTIVE STARTUP lost
    assert [m["t"] for m in out.sent] == ["standby_startup"] and ha.state == "awaiting_batch", out.sent
    out.sent.clear()
    await hello("i2", "starting")  # the active restarted
    assert out.sent == [] and ha.state == WAITING, out.sent
    await ha.ev_peer_frame({"t": "active_startup", "name": "host-b", "instance": "i2", "epoch": 5})
    assert [m["t"] for m in out.sent] == ["standby_startup"], out.sent
    out.sent.clear()
    ha.set_state(WAITING, "test: no BATCH WRITE COMPLETE")  # before a heartbeat past `starting`
    ha.maybe_standby_startup()
    assert [m["t"] for m in out.sent] == ["standby_startup"], out.sent
