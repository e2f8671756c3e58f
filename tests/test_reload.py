"""SIGHUP reloads what can change while running and names what needs a restart (issue 6 item 4)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from tests.support.procs import wait_for


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            e = json.loads(line)
            if e.get("event") == name:
                out.append(e)
    return out


async def test_sighup_reloads_cp_and_host(sb: Any) -> None:
    info = await sb(terminals=10)
    d = Path(info["dir"])
    st = sandbox.load_state(d)
    cp_toml = d / "cp.toml"
    text = cp_toml.read_text()
    new = text.replace("held_bound = 256", "held_bound = 64\nheld_total_bytes = 2097152").replace(st["cp"]["http"], "127.0.0.1:1")
    assert new.count("held_total_bytes") == 1
    cp_toml.write_text(new)
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    ev = wait_for(lambda: events(d / "cp.log", "config_reloaded"), 10, what="CP reload")[0]
    assert sorted(ev["applied"]) == ["cp.held_bound", "cp.held_total_bytes"] and ev["needs_restart"] == ["cp.http_listen"]
    assert (await sandbox.status(d))["cp"]["held_bytes"]["bound"] == 2097152  # in use, not only read
    wait_for(lambda: events(d / "cp.log", "config_reload_incomplete"), 10, what="the restart-only settings named")  # the next line logged
    host_toml = Path(st["hosts"]["host-b"]["config"])
    assert "ring_poll_interval" not in host_toml.read_text()  # the sandbox leaves it at its default
    host_toml.write_text(host_toml.read_text().replace("[takeover]", "ring_poll_interval = 0.2\n\n[takeover]", 1))
    os.kill(st["hosts"]["host-b"]["pid"], signal.SIGHUP)
    ev = wait_for(lambda: events(d / "host-b.log", "config_reloaded"), 10, what="host reload")[0]
    assert ev["applied"] == ["host.ring_poll_interval"] and ev["needs_restart"] == []
    # a broken file is refused as a whole and the daemon goes on with what it has
    cp_toml.write_text("[cp\n")
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    wait_for(lambda: events(d / "cp.log", "config_reload_failed"), 10, what="refused reload")
    s = await sandbox.status(d)
    assert s["established"] and sandbox._alive(st["cp"]["pid"])


async def test_a_host_reload_keeps_what_waits_on_storage_in_step_and_the_batch_area_big_enough(tmp_path: Path) -> None:
    """hsbd's SIGHUP (HostServer.reload, the daemon's own code, not started): a new
    `storage_timeout` moves the standby's wait for a batch write with it; renaming a group's
    terminals (the old names stay until a restart) is refused when old and new together would
    not fit the batch area sized at start (the next batch write would fail)."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    assert srv.takeover.own_batch_records * srv.takeover.entries_per_record == 15  # 10 terminals: one batch record
    text = p.read_text()
    p.write_text(text.replace("[takeover]\n", "[takeover]\nstorage_timeout = 4.0\n", 1))
    await srv.reload()
    assert 12.0 <= srv.ha.batch_wait_s < 12.01 and srv.takeover.store.timeout == 4.0
    p.write_text(text.replace('prefix = "T"', 'prefix = "U"'))
    await srv.reload()
    assert srv.sessions.get("U00001") is None and len(srv.sessions.table) == 10


async def test_terminals_added_by_a_reload_are_not_applied_again_by_the_next(tmp_path: Path, monkeypatch: Any) -> None:
    """The running config takes the reloaded terminal lists: a second SIGHUP with nothing
    changed applies nothing (it said `terminals` applied again at every reload)."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.ops import reload as reload_mod
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    p.write_text(p.read_text().replace("count = 10", "count = 12"))
    logs = RecordingLog()
    monkeypatch.setattr(reload_mod, "log", logs)
    await srv.reload()
    await srv.reload()
    done = logs.events("config_reloaded")
    assert [e["applied"] for e in done] == [["terminal_groups"], []], done
    assert [e["terminals_added"] for e in done] == [2, 0]


async def test_a_host_reload_runs_on_its_own_and_a_second_sighup_meanwhile_is_not_lost(tmp_path: Path, monkeypatch: Any) -> None:
    """hsbd's reload runs as a task of its own (the HA loop's events are not held up while the
    file is read); a SIGHUP that comes while one runs gets a reload of its own afterwards."""
    import asyncio

    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.ops import reload as reload_mod
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    logs = RecordingLog()
    monkeypatch.setattr(reload_mod, "log", logs)
    srv.start_reload()
    first = srv._reloading
    assert first is not None and not first.done()  # the caller goes on at once
    p.write_text(p.read_text().replace("count = 10", "count = 11"))
    srv.start_reload()  # a second SIGHUP while the first runs
    deadline = asyncio.get_running_loop().time() + 10
    while len(logs.events("config_reloaded")) < 2:
        assert asyncio.get_running_loop().time() < deadline, logs.entries
        await asyncio.sleep(0.01)
    assert srv.sessions.get("T00011") is not None


async def test_a_host_reload_that_fails_is_logged_and_the_next_sighup_still_reloads(tmp_path: Path, monkeypatch: Any) -> None:
    import asyncio

    from hsb.config import load
    from hsb.host import server as server_mod
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.ops import reload as reload_mod
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    logs, reloads = RecordingLog(), RecordingLog()
    monkeypatch.setattr(server_mod, "log", logs)
    monkeypatch.setattr(reload_mod, "log", reloads)
    real_plan = reload_mod.plan
    calls = 0

    def plan(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the first reload")
        return real_plan(*args)

    monkeypatch.setattr(reload_mod, "plan", plan)
    srv.start_reload()
    deadline = asyncio.get_running_loop().time() + 10
    while not logs.events("config_reload_error"):
        assert asyncio.get_running_loop().time() < deadline, logs.entries
        await asyncio.sleep(0.01)
    srv.start_reload()
    while not reloads.events("config_reloaded"):
        assert asyncio.get_running_loop().time() < deadline, reloads.entries
        await asyncio.sleep(0.01)


async def test_a_cp_reload_runs_beside_its_tick_loop_and_a_failing_one_is_logged(tmp_path: Path, monkeypatch: Any) -> None:
    """hsbcpd's reload is a task of its own: while it waits on the file the tick loop goes on
    (heartbeats, the journal's beat), and one that fails is logged (config_reload_error), the
    CP going on with what it has."""
    import asyncio
    import threading

    from hsb.cp import server as cp_server
    from hsb.ops import reload as reload_mod
    from hsb.service.builtin import EchoService
    from tests.support.inproc import hot_standby, pair_in_hot_standby
    from tests.support.logrec import RecordingLog

    logs = RecordingLog()
    monkeypatch.setattr(cp_server, "log", logs)
    release = threading.Event()

    def plan(*args: Any) -> Any:  # the file's read, held up; then a bug
        release.wait(10)
        raise RuntimeError("a bug in the reload")

    monkeypatch.setattr(reload_mod, "plan", plan)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        ticks = 0
        real_tick = core.tick

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            real_tick()

        core.tick = tick  # type: ignore[method-assign]
        cp.reload_requested = True
        deadline = asyncio.get_running_loop().time() + 10
        while cp._reloading is None:
            assert asyncio.get_running_loop().time() < deadline, "the tick loop never started the reload"
            await asyncio.sleep(0.01)
        seen = ticks
        while ticks < seen + 5:  # the reload held up on its file: the tick loop goes on
            assert asyncio.get_running_loop().time() < deadline, "the tick loop stopped while the reload waited"
            await asyncio.sleep(0.01)
        assert not cp._reloading.done()
        release.set()
        while not logs.events("config_reload_error"):
            assert asyncio.get_running_loop().time() < deadline, logs.entries
            await asyncio.sleep(0.01)
        assert hot_standby(a, b)


async def test_a_cp_waiting_to_take_over_checks_its_config_at_sighup_and_says_what_needs_a_restart(tmp_path: Path) -> None:
    """A second CP machine's hsbcpd waits for months maybe: a config edited meanwhile and SIGHUPed
    is checked at once, every error named now (not at the takeover, in the middle of a failover),
    and a valid one says what applies once it serves and what needs this waiting hsbcpd restarted.
    Before, a waiting CP reloaded its certificates only and said nothing of the rest."""
    import signal as sig

    from tests.support.procs import _run_cp, cp_config, until

    d = tmp_path / "cp"
    d.mkdir()
    # its address is on no interface here: it waits for good
    cfg = cp_config(d, terminals=2, takeover="on_wake", terminal_listen="192.0.2.1:7000")
    good = cfg.read_text()
    cp = _run_cp(d, cfg, None, wait=False)
    try:
        cp.wait_event("cp_waiting", timeout=15)
        cfg.write_text(good.replace("[cp]\n", '[cp]\nheld_bound = "many"\n'))
        cp.popen.send_signal(sig.SIGHUP)
        await until(lambda: cp.events("config_reload_failed"), 10, what="config_reload_failed while waiting")
        assert "held_bound" in json.dumps(cp.events("config_reload_failed")[0]["errors"])
        assert not cp.events("config_checked")
        cfg.write_text(good.replace("[cp]\n", "[cp]\nheld_bound = 7\n").replace('name = "cp"', 'name = "cp-2"'))
        cp.popen.send_signal(sig.SIGHUP)
        await until(lambda: cp.events("config_checked"), 10, what="config_checked while waiting")
        checked = cp.events("config_checked")[0]
        assert checked["applies_when_serving"] == ["cp.held_bound"] and checked["needs_restart"] == ["cp.name"], checked
        assert "cp.name" in cp.events("config_reload_incomplete")[0]["msg"]
        assert not cp.events("journal_recovered") and cp.popen.poll() is None  # still waiting
    finally:
        cp.stop()


def test_a_standby_waits_for_a_batch_write_as_long_as_the_active_may_take_for_it(tmp_path: Path) -> None:
    """The active gives its batch write (a third of the file) and the open before it (a torn
    header: the whole file scanned) the time to move those bytes at 16 MiB/s beyond the storage
    timeout; the standby waited 6 s whatever the size, so past about 250,000 terminals it gave
    up on every batch while it was still being written, and hot standby never came."""
    from types import SimpleNamespace

    from hsb.host.ha import batch_wait
    from hsb.takeover.store import BULK_RATE

    tk = SimpleNamespace(storage_timeout=2.0, records=1_000_000, record_size=4096)
    active_may_take = (tk.storage_timeout + tk.records * tk.record_size / BULK_RATE) + (
        tk.storage_timeout + tk.records / 3 * tk.record_size / BULK_RATE
    )
    assert batch_wait(tk) >= active_may_take, (batch_wait(tk), active_may_take)
    assert batch_wait(SimpleNamespace(storage_timeout=2.0, records=64, record_size=4096)) < 6.1  # (small files: as before)
