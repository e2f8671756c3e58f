"""Takeover-file faults while the pair runs (issue 7 item 4): stalls past the
deadline, EIO, corrupt/torn records, and the file being replaced. Real processes;
the faults are injected through the storage facade's hook (HSB_CRASH_CONTROL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from tests.support.hostclient import FakeTerminal
from tests.support.procs import arm_faults, log_events, until
from tests.support.sandboxed import active_names, status, wait_status

HOSTS = ("host-a", "host-b")


@pytest.fixture
async def sbx(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = tmp_path / "sb"
    env = {h: {"HSB_CRASH_CONTROL": str(d / f"ctl-{h}")} for h in HOSTS}
    info = await sandbox.aup(d, terminals=20, host_env=env)
    yield info
    sandbox.down(d, timeout=0.5)


async def control(info: dict[str, Any], host: str, text: str) -> None:
    d = Path(info["dir"])
    await arm_faults(d / f"ctl-{host}", sandbox.load_state(d)["hosts"][host]["pid"], text)


def host(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in st["hosts"] if h.get("name") == name)


async def logon(info: dict[str, Any], name: str) -> FakeTerminal:
    t = await FakeTerminal.connect(info["cp"]["terminal"], name)
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    return t


async def served(t: FakeTerminal, mid: int, timeout: float = 2.0) -> None:
    mark = len(t.inbox)
    t.send({"t": "msg", "id": mid, "data": f"m{mid}"})
    r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == mid, timeout=timeout, start=mark)
    assert r["data"] == f"m{mid}"


async def standby_has(info: dict[str, Any], name: str, timeout: float = 15.0) -> None:
    from hsb.config import parse_addr
    from hsb.wire.auth import load_secret
    from hsb.wire.client import cp_sessions

    h, p = parse_addr(info["cp"]["admin"])
    secret = load_secret(info["secret_file"])
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        s = await cp_sessions(h, p, secret)
        if s.get(name, {}).get("standby"):
            return
        if asyncio.get_running_loop().time() > deadline:
            st = await status(info)
            brief = [(h.get("name"), h.get("role"), h.get("state"), h.get("terminals"), h.get("last_error")) for h in st["hosts"]]
            raise AssertionError(f"{name} has no standby session at the CP ({s.get(name)}); hosts {brief}")
        await asyncio.sleep(0.05)


async def test_stall_on_the_active_is_reported_and_service_goes_on(sbx: dict[str, Any]) -> None:
    t1 = await logon(sbx, "T00001")
    await standby_has(sbx, "T00001")
    epoch = (await status(sbx))["cp"]["epoch"]
    await control(sbx, "host-a", "storage delay 6")  # the deadline is 2 s
    t2 = await logon(sbx, "T00002")  # its ring write stalls
    st = await wait_status(
        sbx, lambda s: host(s, "host-a").get("takeover_file", {}).get("storage") not in (None, "ok"), timeout=10, what="storage reported"
    )
    assert "takeover storage not responding" in host(st, "host-a")["takeover_file"]["storage"]
    for i in range(1, 6):  # service is never interrupted by a takeover-file problem
        await served(t1, i, timeout=1.0)
    await served(t2, 1, timeout=1.0)
    st = await status(sbx)
    assert st["cp"]["epoch"] == epoch and active_names(st) == ["host-a"]
    assert host(st, "host-a")["peer_link"]["up"] and host(st, "host-b")["peer_link"]["up"], "heartbeats kept flowing"
    await control(sbx, "host-a", "storage clear")
    await standby_has(sbx, "T00002")  # the change was kept and written once storage answered
    await wait_status(sbx, lambda s: host(s, "host-a")["takeover_file"]["storage"] == "ok", what="storage ok again")


async def test_eio_on_the_active_is_reported_and_recovered(sbx: dict[str, Any]) -> None:
    t1 = await logon(sbx, "T00001")
    await standby_has(sbx, "T00001")
    await control(sbx, "host-a", "storage eio")
    t3 = await logon(sbx, "T00003")  # noqa: F841  (keep a reference: a collected client logs off)
    st = await wait_status(sbx, lambda s: "error" in str(host(s, "host-a")["takeover_file"]["storage"]).lower(), timeout=10, what="EIO reported")
    assert "Input/output error" in host(st, "host-a")["takeover_file"]["storage"]
    await served(t1, 1, timeout=1.0)
    await control(sbx, "host-a", "storage clear")
    await standby_has(sbx, "T00003")


async def cp_sessions(info: dict[str, Any]) -> dict[str, Any]:
    """The CP's per-terminal view: each session's host and attributes (active and standby)."""
    from hsb.config import parse_addr
    from hsb.wire.auth import load_secret
    from hsb.wire.client import cp_sessions

    h, p = parse_addr(info["cp"]["admin"])
    data: dict[str, Any] = await cp_sessions(h, p, load_secret(info["secret_file"]))
    return data


async def test_corrupt_reads_on_the_standby_are_never_applied(sbx: dict[str, Any]) -> None:
    t1 = await logon(sbx, "T00001")  # keep a reference: a collected client logs off
    await standby_has(sbx, "T00001")
    d = Path(sbx["dir"])
    mark = len(log_events(d / "host-b.log"))
    await control(sbx, "host-b", "storage corrupt 12")  # the next 12 records it reads are damaged
    t4 = await logon(sbx, "T00004")

    def damage_seen() -> list[dict[str, Any]]:
        """host-b's log since the fault: the damaged ring records taken for what they are."""
        evs = log_events(d / "host-b.log")[mark:]
        return [e for e in evs if e.get("event") == "ring_resync_needed" and e.get("status") == "corrupt"]

    # it notices the damage, resyncs, and is not established again until a good batch is read
    await until(damage_seen, 20, what="host-b asking for a resync because of corrupt ring records")
    await wait_status(sbx, lambda s: s["established"], timeout=30, what="established after a good batch")
    # (12 damaged reads: the ring's, then the batch read's, each refused and read again)
    assert [e for e in log_events(d / "host-b.log")[mark:] if e.get("event") == "batch_read_failed"], "no damaged batch read"
    await standby_has(sbx, "T00004")
    await standby_has(sbx, "T00001")
    # nothing damaged reached host-b's sessions: each standby session is host-b's, with exactly
    # the attributes host-a opened the terminal's active session with
    sessions = await cp_sessions(sbx)
    for name in ("T00001", "T00004"):
        s = sessions[name]
        assert s["active"]["host"] == "host-a" and s["standby"]["host"] == "host-b", (name, s)
        assert s["active"]["attrs"] and s["standby"]["attrs"] == s["active"]["attrs"], (name, s)
    assert (await status(sbx))["established"]
    await served(t4, 1)
    await served(t1, 1)


async def test_stalled_batch_keeps_the_standby_unestablished_until_storage_answers(sbx: dict[str, Any]) -> None:
    t1 = await logon(sbx, "T00001")
    d = Path(sbx["dir"])
    await control(sbx, "host-a", "storage hold")  # the active's next batch write hangs
    os.kill(sandbox.load_state(d)["hosts"]["host-b"]["pid"], signal.SIGKILL)
    await until(lambda: not sandbox._alive(sandbox.load_state(d)["hosts"]["host-b"]["pid"]), 10, what="host-b dead")
    sandbox.start_host(d, "host-b", "standby", {"HSB_CRASH_CONTROL": str(d / "ctl-host-b")})
    await until(lambda: "batch_write_failed" in (d / "host-a.log").read_text(), 15, what="batch write deadline")
    st = await status(sbx)
    assert not st["established"] and host(st, "host-b")["state"] != "established"
    await served(t1, 1, timeout=1.0)  # the active serves throughout
    await control(sbx, "host-a", "storage clear")
    st = await wait_status(sbx, lambda s: s["established"], timeout=30, what="established once storage answers")
    await standby_has(sbx, "T00001")


async def test_a_file_recreated_under_the_running_active_is_the_one_written(sbx: dict[str, Any]) -> None:
    """The takeover file recreated at its path while the active runs (`hsbctl file create
    --force` renames a new file into place): the active's next batch write goes into the new
    file (it wrote into the old one, unlinked, and a standby restarted on the path could never
    be established, the two hosts said to name different files)."""
    t1 = await logon(sbx, "T00001")
    d = Path(sbx["dir"])
    path = Path(sbx["takeover"])
    create = [sys.executable, "-m", "hsb.ctl", "file", "create", str(path), "--records", str(sandbox.records_for(20)), "--force"]
    # a file a pair has written: one --force is refused, naming who wrote it and what to do
    once = subprocess.run(create, capture_output=True, text=True)
    assert once.returncode == 1 and "in use by a pair" in once.stderr and "host-a" in once.stderr and "--force twice" in once.stderr, once.stderr
    subprocess.run([*create, "--force"], check=True, capture_output=True)
    b_pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
    os.kill(b_pid, signal.SIGKILL)
    await until(lambda: not sandbox._alive(b_pid), 10, what="host-b dead")
    sandbox.start_host(d, "host-b", "standby")
    await wait_status(sbx, lambda s: s["established"], timeout=30, what="established again on the new file")
    assert "takeover_file_replaced" in (d / "host-a.log").read_text()
    assert "takeover_file_mismatch" not in (d / "host-a.log").read_text()
    await standby_has(sbx, "T00001")
    await served(t1, 1)
    assert active_names(await status(sbx)) == ["host-a"]
