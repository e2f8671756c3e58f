"""Whether this machine holds the CP's virtual address (hsb.cp.waiting.holds_address), which a
CP with `takeover = "on_wake"` asks every 0.1 s: an IPv6 address that starts with a letter or a
colon is an address, not a name (it was taken for a name, so always "held"); a check that
cannot be made (no socket: the open-files limit) keeps the serving CP serving and the waiting
one waiting, and never stops the process. The address leaving as the CP is to take over is a
release (exit 0), not an address that is not this machine's (73); a CP that cannot listen takes
no generation (it binds first)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest

from hsb.cp import waiting

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("addr", ["[fd00::10]:7000", "[fe80::1]:7000", "[::ffff:10.255.255.9]:7000", "10.255.255.9:7000"])
def test_an_address_this_machine_does_not_have_is_not_held(addr: str) -> None:
    assert waiting.holds_address(addr) is False


@pytest.mark.parametrize("addr", ["127.0.0.1:7000", "0.0.0.0:7000", "[::]:7000", "cp.example:7000"])
def test_a_local_address_a_wildcard_or_a_name_is_held(addr: str) -> None:
    assert waiting.holds_address(addr) is True


def test_a_check_that_cannot_be_made_is_what_the_caller_says(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*_: object, **__: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_socket)
    assert waiting.holds_address("10.255.255.9:7000") is True  # the serving CP serves on
    assert waiting.holds_address("10.255.255.9:7000", unknown=False) is False  # a waiting one waits


def test_on_wake_refuses_a_wildcard_or_a_name_to_listen_on(tmp_path: Path) -> None:
    """A wildcard or a name is held on every machine: a waiting CP could take over where the
    virtual address is not. The config check refuses it, naming the fix."""
    from hsb.cp.config import CPSection

    for listen in ("0.0.0.0:7000", "[::]:7000", "cp.example.net:7000"):
        with pytest.raises(ValueError, match="virtual address keepalived moves"):
            CPSection(secret_file="s", takeover="on_wake", terminal_listen=listen)
    CPSection(secret_file="s", takeover="on_wake", terminal_listen="10.0.0.5:7000")
    CPSection(secret_file="s", terminal_listen="0.0.0.0:7000")  # (one CP machine: any address)


def test_on_wake_refuses_a_machine_where_every_bind_succeeds(tmp_path: Path) -> None:
    """net.ipv4.ip_nonlocal_bind = 1 makes every bind succeed: whether this machine holds the
    address can no longer be told. Said, with the sysctl to set."""
    from hsb.cp.waiting import nonlocal_bind_problem

    for fam in ("ipv4", "ipv6"):
        (tmp_path / fam).mkdir()
        (tmp_path / fam / "ip_nonlocal_bind").write_text("0\n")
    assert nonlocal_bind_problem("10.0.0.5:7000", str(tmp_path)) is None
    (tmp_path / "ipv4" / "ip_nonlocal_bind").write_text("1\n")
    why = nonlocal_bind_problem("10.0.0.5:7000", str(tmp_path))
    assert why is not None and "sysctl -w net.ipv4.ip_nonlocal_bind=0" in why
    assert nonlocal_bind_problem("[fd00::5]:7000", str(tmp_path)) is None  # (the IPv6 one is 0)


async def test_the_address_moved_away_during_a_takeover_is_a_release_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting CP (takeover = "on_wake") checks that it holds the virtual address, then binds
    it, before it takes a generation and recovers the journal. keepalived moving the address away
    in between (a flap, a split brain ending) fails the bind with EADDRNOTAVAIL: once exit 73,
    which the unit and the notify script do not restart, so the machine was out of the pair until
    someone acted. It is the address leaving, as `cp_released`: said so, exit 0 (systemd starts a
    waiting hsbcpd), and no generation taken (nothing fenced). A listen address that is not this
    machine's while the virtual address is still here stays 73, as does any on a CP that takes
    over at its start."""
    import asyncio
    import errno

    import structlog

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from hsb.cp.main import os_error_code
    from hsb.ops.listen import ListenError
    from tests.support.procs import SECRET, cp_config

    # 192.0.2.1 (TEST-NET-1) is on no interface here: held while the CP waited (so the wait says),
    # gone by its bind
    journal = tmp_path / "j"
    journal.mkdir()
    moving = "192.0.2.1:7000"
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake", terminal_listen=moving), CPConfig)
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(s.serve(), 20)
    assert code == 0
    assert [e["event"] for e in logs if e["event"] in ("journal_recovered", "cp_address_lost_at_takeover", "cp_stopped")] == [
        "cp_address_lost_at_takeover",
        "cp_stopped",
    ], logs
    assert not list(journal.glob("gen-*")), sorted(p.name for p in journal.iterdir())  # (bound before the generation)
    lost = next(e for e in logs if e["event"] == "cp_address_lost_at_takeover")
    assert lost["address"] == moving and lost["key"] == "cp.terminal_listen", lost
    assert not [e for e in logs if e["event"] == "cp_started"]
    monkeypatch.undo()

    # the virtual address still here, the host listener on one that is not: the config's error
    for d in ("b", "c"):
        (tmp_path / d).mkdir()
    cfg = load(cp_config(tmp_path / "b", terminals=2, journal=str(journal), takeover="on_wake", host_listen=moving), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "b" / "cp.toml"))
    with pytest.raises(ListenError) as exc:
        await asyncio.wait_for(s.serve(), 20)
    assert exc.value.errno == errno.EADDRNOTAVAIL and os_error_code(s.state, exc.value) == 73
    await s.shutdown()
    # a CP that takes over at its start (one CP machine): an address that is not this machine's
    cfg = load(cp_config(tmp_path / "c", terminals=2, journal="j", terminal_listen=moving), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "c" / "cp.toml"))
    with pytest.raises(ListenError) as exc:
        await asyncio.wait_for(s.serve(), 20)
    assert exc.value.errno == errno.EADDRNOTAVAIL and os_error_code(s.state, exc.value) == 73
    await s.shutdown()


@pytest.mark.parametrize("key", ["terminal_listen", "host_listen", "host_listen by name"])
@pytest.mark.parametrize("takeover", ["at_start", "on_wake"])
async def test_a_cp_that_cannot_listen_takes_no_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, takeover: str) -> None:
    """A port another process holds on this machine: the CP binds its terminal and host
    listeners before it takes the journal's generation (an address given as a name too), so it
    fails its start (73) without having fenced the CP that serves (a generation taken, then a
    bind refused, left nobody serving: the old CP superseded, the new one out with 73, which the
    unit does not restart), and leaves nothing bound."""
    import asyncio

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from hsb.cp.main import os_error_code
    from hsb.ops.listen import ListenError
    from tests.support.procs import SECRET, cp_config

    journal = tmp_path / "j"
    journal.mkdir()
    taken = socket.create_server(("127.0.0.1", 0))  # another process's listener, say
    try:
        port = taken.getsockname()[1]
        name = key.endswith("by name")
        key = key.split()[0]
        extra: dict[str, Any] = {key: f"{'localhost' if name else '127.0.0.1'}:{port}"}
        if takeover == "on_wake":
            extra["wake_file"] = str(tmp_path / "cp.state")
        (tmp_path / "cp.state").write_text("MASTER\n")
        cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover=takeover, **extra), CPConfig)
        monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
        s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
        try:
            with pytest.raises(ListenError) as exc:
                await asyncio.wait_for(s.serve(), 20)
            assert exc.value.errno == errno.EADDRINUSE and exc.value.key == f"cp.{key}", exc.value
            assert os_error_code(s.state, exc.value) == 73
            assert s.cp is None and not list(journal.glob("gen-*")), sorted(p.name for p in journal.iterdir())
            assert not s.ahead  # (the terminal one bound before a refused host one: closed already)
        finally:
            await s.shutdown()
    finally:
        taken.close()


async def test_the_address_gone_once_the_journal_is_read_is_not_served_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """takeover = "on_wake": the virtual address was here at the wait and at the bind, and
    keepalived moved it while the journal was read (seconds, for a large one). The CP does not
    serve on it (no cp_started, no READY): the address leaving, exit 0, the generation it took
    said in cp_address_lost_at_takeover."""
    import asyncio

    import structlog

    from hsb.config import load
    from hsb.cp import listeners
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from tests.support.procs import SECRET, cp_config

    journal = tmp_path / "j"
    journal.mkdir()
    (tmp_path / "cp.state").write_text("MASTER\n")
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake", wake_file=str(tmp_path / "cp.state")), CPConfig)
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)  # (the wait's look)
    monkeypatch.setattr(listeners, "holds_address", lambda *a: False)  # (the look once the journal is read)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(s.serve(), 20)
    assert code == 0
    said = [e["event"] for e in logs if e["event"] in ("journal_recovered", "cp_address_lost_at_takeover", "cp_started", "cp_stopped")]
    assert said == ["journal_recovered", "cp_address_lost_at_takeover", "cp_stopped"], said
    lost = next(e for e in logs if e["event"] == "cp_address_lost_at_takeover")
    assert lost["generation"] == 1 and lost["key"] == "cp.terminal_listen", lost
    assert not s.ahead and not s.servers[1:], s.servers  # (only the admin listener was served on)
