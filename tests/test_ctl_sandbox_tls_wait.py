"""`hsbctl sandbox up --tls` waits for hsbcpd's host port with a TLS handshake, not a bare TCP
connect: the bare connect was a plaintext client at a TLS port, so every TLS sandbox began with
a `tls_refused` warning ("closed before a TLS handshake") in cp.log and
`hsb_protocol_errors_total{code="tls_refused",link="host"}` at 1, which an operator walking
through docs/tls.md took for a problem. Without TLS it stays a TCP connect.

And `hsbctl sandbox start-host` waits until the host is registered at the CP, as the README
says, not only past `starting`: a host whose CP link TLS refuses is not started."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.ctl.sandbox_files import SandboxError
from hsb.ctl.tls_cmd import make_ca_and_certs
from tests.test_ctl_sandbox_edges import _state

pytestmark = pytest.mark.timeout(30)


class OneServer:
    """A listener that takes one connection and records whether its first bytes were a TLS
    handshake that completed (`ctx`), or what it got (`None`: plaintext, no handshake)."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.ctx = ctx
        self.handshake: bool | None = None
        self.first = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        with conn:
            if self.ctx is None:
                self.first = conn.recv(16)
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    self.handshake = True
            except (ssl.SSLError, OSError):
                self.handshake = False

    def done(self) -> None:
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive()


def test_the_wait_for_a_tls_host_port_makes_the_handshake(tmp_path: Path) -> None:
    make_ca_and_certs(tmp_path / "tls", ["cp", "hsbctl"])
    t = tmp_path / "tls"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(t / "cp.pem", t / "cp.key")
    ctx.load_verify_locations(t / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # (as the CP's host listener: mutual TLS)
    srv = OneServer(ctx)
    sandbox._wait_port(srv.addr, 10.0, tmp_path)
    srv.done()
    assert srv.handshake is True


def test_the_wait_for_a_plaintext_host_port_sends_nothing(tmp_path: Path) -> None:
    srv = OneServer(None)
    sandbox._wait_port(srv.addr, 10.0, tmp_path)  # (no tls/ folder: a sandbox without --tls)
    srv.done()
    assert srv.first == b""


async def test_start_host_waits_until_the_host_is_registered_at_the_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby restarted while the CP's certificate has expired follows its peer
    (`waiting_for_active`) with its CP link refused: `start-host` said it started. It waits until
    the host is registered at the CP (README), and says why not when it never is."""
    _state(tmp_path)
    cut_off = {"state": "waiting_for_active", "registered_at_cp": False, "last_error": "host link to the CP not made: tls: certificate has expired"}
    answers = [cut_off, cut_off, {"state": "standby", "registered_at_cp": True}]
    asked: list[str] = []

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float, ssl: Any = None) -> dict[str, Any]:
        asked.append(addr)
        return {"data": answers[min(len(asked), len(answers)) - 1]}

    monkeypatch.setattr(sandbox, "ask", ask)
    monkeypatch.setattr(sandbox, "_exited", lambda d, name, pid: None)
    assert (await sandbox.wait_started(tmp_path, "host-b", 1, timeout=10))["state"] == "standby"
    assert len(asked) == 3
    answers[:] = [cut_off]
    with pytest.raises(SandboxError, match=r"did not start within 0s \(host link to the CP not made: tls: certificate has expired\)"):
        await sandbox.wait_started(tmp_path, "host-b", 1, timeout=0.3)
