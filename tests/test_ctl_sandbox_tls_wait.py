"""`hsbctl sandbox up --tls` waits for hsbcpd's host port with a TLS handshake, not a bare TCP
connect: the bare connect was a plaintext client at a TLS port, so every TLS sandbox began with
a `tls_refused` warning ("closed before a TLS handshake") in cp.log and
`hsb_protocol_errors_total{code="tls_refused",link="host"}` at 1, which an operator walking
through docs/tls.md took for a problem. Without TLS it stays a TCP connect."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from hsb.ctl import sandbox
from hsb.ctl.tls_cmd import make_ca_and_certs

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
