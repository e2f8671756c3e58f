"""A daemon pointed at the wrong port, or told to listen where it cannot, says so in one line
that names the config key and the fix that fits the reason:

- host.cp at the CP's admin port (host.peer at the CP's host port): the refusal says "this port
  serves the admin link", and its fix was "fix the secret or install the same hsb version";
  now it names the key and the listener to point it at;
- host.cp at the CP's terminal port (or any port that answers but is no hsb link): retried in
  silence, status said only "CP link down"; now a warning once, and the status's last error;
- hsbcpd / hsbd listening on an address that is not this machine's, a port taken, a name that
  does not resolve: "cannot listen: … (is another hsbcpd running on these ports?)", no key, and
  --check-config said OK; now the key and the fix for that errno."""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hsb.config import load
from hsb.cp.config import CPConfig
from hsb.cp.server import CPServer
from hsb.host import cplink
from hsb.host.config import HostConfig
from hsb.host.server import HostServer
from hsb.ops import refusals
from hsb.ports import free_port
from hsb.service.api import load_service
from hsb.takeover.fileio import create_file
from hsb.wire.client import FrameStream
from tests.support.inproc import until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET, cp_config, host_config, write_secret

NOT_HERE = "10.255.255.9"  # an address this machine does not have (tests/test_cp_address.py)


@asynccontextmanager
async def cp_and_host(
    d: Path, *, cp_kw: dict[str, Any] | None = None, **addrs: Callable[[CPServer], str]
) -> AsyncIterator[tuple[CPServer, HostServer]]:
    """A CP, and host-a (standby) whose `cp` and `peer` are what `addrs` pick from the CP (its
    bound listeners), both in this process; torn down after."""
    srv = CPServer(load(cp_config(d, terminals=2, **(cp_kw or {})), CPConfig), SECRET)
    await srv.startup()
    tick = asyncio.ensure_future(srv.tick_loop())
    h: HostServer | None = None
    ha: asyncio.Task[None] | None = None
    try:
        create_file(str(d / "takeover.dat"), 64, 4096)
        pick = {k: f(srv) for k, f in addrs.items()}
        p = host_config(
            d,
            "host-a",
            cp=pick.get("cp", srv.bound["host"]),
            peer_listen=f"127.0.0.1:{free_port()}",
            peer=pick.get("peer", f"127.0.0.1:{free_port()}"),
            takeover=d / "takeover.dat",
            records=64,
            terminals=2,
        )
        cfg = load(p, HostConfig)
        h = HostServer(cfg, "standby", SECRET, load_service(cfg.host.service, "host-a", {}))
        await h.startup()
        ha = asyncio.ensure_future(h.ha.run())
        yield srv, h
    finally:
        if ha is not None:
            ha.cancel()
            await asyncio.gather(ha, return_exceptions=True)
        if h is not None:
            await h.close()
        srv.should_exit.set()
        await tick
        await srv.shutdown()


@pytest.mark.timeout(60)
async def test_a_host_at_another_links_port_is_told_which_listener_to_point_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host.cp at the CP's admin port, host.peer at the CP's host port: each refusal's fix names
    the key and the listener, not the secret or the versions; the status's last error says it."""
    rec = RecordingLog()
    monkeypatch.setattr(refusals, "log", rec)
    async with cp_and_host(tmp_path, cp=lambda s: s.bound["admin"], peer=lambda s: s.bound["host"]) as (_, h):
        await until(lambda: rec.events("cp_link_refused") and rec.events("peer_auth_failed"), "both refusals logged")
        cp_said = rec.events("cp_link_refused")[0]
        assert "serves the admin link" in cp_said["reason"], cp_said
        assert "host.cp" in cp_said["msg"] and "the CP's host_listen" in cp_said["msg"], cp_said
        assert "secret" not in cp_said["msg"] and "version" not in cp_said["msg"], cp_said
        peer_said = rec.events("peer_auth_failed")[0]
        assert "serves the host link" in peer_said["reason"], peer_said
        assert "host.peer" in peer_said["msg"] and "peer_listen" in peer_said["msg"], peer_said
        assert "secret" not in peer_said["msg"] and "version" not in peer_said["msg"], peer_said
        await until(lambda: "not made" in str(h.ha.status()["last_error"]), "the status's last error")
        last = str(h.ha.status()["last_error"])
        assert "host_listen" in last or "peer_listen" in last, last


def test_the_fix_follows_the_reason() -> None:
    """A wrong answer names the secret, a version the versions, another link's port the key; a
    daemon that does not send `serves` yet (its text only) is read the same."""
    hint = refusals.refusal_hint
    link = {"code": "auth_failed", "msg": "this port serves the admin link, not 'host'", "cause": "link", "serves": "admin"}
    assert "set host.cp to the CP's host_listen" in hint(link, "host.cp", "host", "the CP's host_listen")
    old = {"code": "auth_failed", "msg": "this port serves the peer link, not 'host'"}
    said = hint(old, "host.cp", "host", "the CP's host_listen")
    assert "a host's peer_listen" in said and "secret" not in said, said
    mac = {"code": "auth_failed", "msg": "wrong answer to the challenge (secret differs?)", "cause": "secret"}
    said = hint(mac, "host.cp", "host", "the CP's host_listen")
    assert "secret" in said and "version" not in said and "host.cp" not in said, said
    ver = {"code": "version_mismatch", "msg": "host-a speaks link protocol 4 …"}
    said = hint(ver, "host.peer", "peer", "the other host's peer_listen")
    assert "version" in said and "secret" not in said, said


@pytest.mark.timeout(60)
async def test_a_host_at_the_cps_terminal_port_warns_once_and_says_it_in_its_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal port takes the connection and waits for a hello: the host's authentication
    timed out and was tried again in silence. Now one warning (not one per try) naming host.cp
    and the CP's host_listen, and the status's last error says it."""
    rec = RecordingLog()
    monkeypatch.setattr(refusals, "log", rec)
    monkeypatch.setattr(cplink, "AUTH_TIMEOUT_S", 0.3, raising=False)  # (the tries come faster; the same path)
    tries: list[int] = []
    real = FrameStream.connect

    async def counted(host: str, port: int, **kw: Any) -> Any:
        tries.append(port)
        return await real(host, port, **kw)

    monkeypatch.setattr(FrameStream, "connect", counted)
    async with cp_and_host(tmp_path, cp=lambda s: s.bound["terminal"]) as (srv, h):
        terminal = int(srv.bound["terminal"].rpartition(":")[2])
        await until(lambda: tries.count(terminal) >= 4, "four tries at the terminal port")
        said = rec.events("cp_link_wrong_port")
        assert len(said) == 1 and said[0]["level"] == "warning", rec.entries
        assert "no challenge" in said[0]["reason"], said
        assert "host.cp" in said[0]["msg"] and "terminal_listen" in said[0]["msg"] and "the CP's host_listen" in said[0]["msg"], said
        last = str(h.ha.status()["last_error"])
        assert last.startswith("host link to the CP not made: no challenge") and "host_listen" in last, last
        assert h.ha.status()["cp_link"] == "down"


@pytest.mark.timeout(60)
async def test_an_error_or_bytes_in_place_of_the_challenge_are_a_wrong_port_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal port whose hello timeout is shorter than the host's wait closes with its own
    error ('not logged on'): it was logged as a refusal whose fix was the secret. A port that
    speaks another protocol first (an SSH server's banner) was a protocol error retried in
    silence. Both: the wrong-port warning."""
    rec = RecordingLog()
    monkeypatch.setattr(refusals, "log", rec)

    async def banner(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await w.drain()

    ssh = await asyncio.start_server(banner, "127.0.0.1", 0)
    ssh_addr = f"127.0.0.1:{ssh.sockets[0].getsockname()[1]}"
    try:
        async with cp_and_host(tmp_path, cp_kw={"auth_timeout": 0.2}, cp=lambda s: s.bound["terminal"], peer=lambda s: ssh_addr):
            await until(lambda: rec.events("cp_link_wrong_port") and rec.events("peer_link_wrong_port"), "both wrong ports said")
            cp_said = rec.events("cp_link_wrong_port")[0]
            assert "idle_timeout" in cp_said["reason"] and "challenge" in cp_said["reason"], cp_said
            assert "host.cp" in cp_said["msg"] and "secret" not in cp_said["msg"], cp_said
            assert rec.events("cp_link_refused") == [], rec.events("cp_link_refused")
            peer_said = rec.events("peer_link_wrong_port")[0]
            assert "does not speak hsb's link protocol" in peer_said["reason"], peer_said
            assert "host.peer" in peer_said["msg"] and "the other host's peer_listen" in peer_said["msg"], peer_said
    finally:
        ssh.close()
        await ssh.wait_closed()


# ---------------------------------------------------------------- listening where it cannot


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_hsbcpd_that_cannot_listen_names_the_key_and_the_fix_for_the_errno(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        # --check-config: a name that does not resolve is an error; an address not this
        # machine's a warning (a config may be checked elsewhere); a port taken nothing (the
        # daemon itself may hold it)
        # the start's exit: 73 for what lasts (not restarted by the unit), 1 for a name that may
        # resolve at the next start
        cases: list[tuple[str, Any, str, int | None, int]] = [
            ("terminal_listen", f"{NOT_HERE}:0", "is not an address of this machine", 0, 73),
            ("terminal_listen", "nohost.invalid:0", "does not resolve", 78, 1),
            ("host_listen", f"127.0.0.1:{port}", f"port {port} is taken by another process", None, 73),
        ]
        for key, addr, why, checked, code in cases:
            cp = cp_config(tmp_path, terminals=1, journal=str(tmp_path / "j"), **{key: addr})
            r = run("hsb.cp", "--config", str(cp))
            lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert r.returncode == code and len(lines) == 1, (key, addr, r.returncode, r.stderr)
            assert f'cp.{key} = "{addr}"' in lines[0] and why in lines[0] and "Traceback" not in r.stderr, lines
            if "taken" not in why:
                assert "another hsbcpd" not in lines[0], lines
            r = run("hsb.cp", "--config", str(cp), "--check-config")
            if checked is None:
                assert r.returncode == 0 and key not in r.stderr, r.stderr
            else:
                said = "config error" if checked else "config warning"
                assert r.returncode == checked and f'{said}: cannot listen on cp.{key} = "{addr}"' in r.stderr and why in r.stderr, r.stderr
    finally:
        taken.close()


@pytest.mark.timeout(120)
def test_hsbd_that_cannot_listen_names_the_key_and_the_fix_for_the_errno(tmp_path: Path) -> None:
    create_file(str(tmp_path / "t.dat"), 64, 4096)
    write_secret(tmp_path)
    for key, addr, why, checked in (
        ("peer_listen", f"{NOT_HERE}:0", "is not an address of this machine", 0),
        ("admin_listen", "nohost.invalid:0", "does not resolve", 78),
    ):
        kw: dict[str, Any] = {"peer_listen": "127.0.0.1:0", key: addr}
        p = host_config(tmp_path, "a", cp="127.0.0.1:1", peer="127.0.0.1:2", takeover=tmp_path / "t.dat", records=64, terminals=2, **kw)
        r = run("hsb.host", "--role", "standby", "--config", str(p))
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert f'host.{key} = "{addr}"' in lines[0] and why in lines[0] and "another hsbd" not in lines[0], lines
        r = run("hsb.host", "--role", "standby", "--config", str(p), "--check-config")
        said = "config error" if checked else "config warning"
        assert r.returncode == checked and f'{said}: cannot listen on host.{key} = "{addr}"' in r.stderr and why in r.stderr, r.stderr


def test_a_listen_error_line_fits_its_errno() -> None:
    from hsb.ops.listen import listen_error_line

    inuse = listen_error_line("cp.host_listen", "127.0.0.1:7001", OSError(errno.EADDRINUSE, "Address already in use"))
    assert 'cp.host_listen = "127.0.0.1:7001"' in inuse and "another hsbcpd" in inuse and "another port" in inuse, inuse
    low = listen_error_line("host.admin_listen", "0.0.0.0:80", OSError(errno.EACCES, "Permission denied"))
    assert "host.admin_listen" in low and "above 1023" in low, low


def test_an_error_of_the_cps_start_that_lasts_exits_73_and_one_that_may_pass_1() -> None:
    """Exit 1 is restarted by the unit (Restart=always, no start limit) and, under the master, by
    the master after a growing wait; a port taken, an address not this machine's or a journal
    the CP's user may not write would fail every start the same way: 73, which the unit does not
    restart (RestartPreventExitStatus), so it ends failed with the error in the journal."""
    import socket

    from hsb.cp.main import os_error_code
    from hsb.ops.listen import ListenError

    def listen(cause: OSError) -> ListenError:
        return ListenError("cp.terminal_listen", "10.0.0.10:7000", cause)

    for state, exc, code in (
        ("starting", listen(OSError(errno.EADDRINUSE, "Address already in use")), 73),
        ("starting", listen(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")), 73),
        ("starting", listen(OSError(errno.EACCES, "Permission denied")), 73),
        ("starting", listen(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")), 1),
        ("starting", OSError(errno.EMFILE, "Too many open files"), 1),
        ("taking_over", PermissionError(errno.EACCES, "Permission denied"), 73),
        ("taking_over", OSError(errno.EROFS, "Read-only file system"), 73),
        ("taking_over", IsADirectoryError(errno.EISDIR, "Is a directory"), 73),
        ("taking_over", OSError(errno.EIO, "Input/output error"), 1),
        ("taking_over", OSError(errno.ESTALE, "Stale file handle"), 1),
        ("taking_over", OSError(errno.ENOSPC, "No space left on device"), 1),
        ("waiting", PermissionError(errno.EACCES, "Permission denied"), 73),
        ("serving", OSError(errno.EADDRINUSE, "Address already in use"), 1),
    ):
        assert os_error_code(state, exc) == code, (state, exc)


async def test_tls_against_a_plaintext_daemon_is_told_to_give_it_tls_not_to_check_certificates() -> None:
    """A host with [tls] pointed at a CP (or peer) without it: our handshake meets the daemon's
    plaintext challenge (WRONG_VERSION_NUMBER). It was logged with the certificates' hint; the
    fix is the same [tls] on the other side. A certificate refused keeps its own hint."""
    import ssl

    from hsb.ops.refusals import tls_plaintext_hint
    from hsb.wire.framing import encode

    async def plaintext(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode({"t": "challenge", "nonce": b"n" * 32, "server": "cp", "proto": 5}))  # as hsbcpd speaks first
        await r.read(100)
        w.close()

    srv = await asyncio.start_server(plaintext, "127.0.0.1", 0)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with pytest.raises(ssl.SSLError) as exc:
            await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=ctx)
    finally:
        srv.close()
    hint = tls_plaintext_hint(exc.value, "the CP at 127.0.0.1:1")
    assert hint is not None and "plaintext" in hint and "[tls]" in hint, (exc.value.reason, hint)
    assert tls_plaintext_hint(ssl.SSLCertVerificationError(1, "certificate verify failed"), "x") is None
