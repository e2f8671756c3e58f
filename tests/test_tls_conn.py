"""A connection's life over the server's own TLS (hsb.wire.tlsio run by hsb.wire.conn), with real
sockets on loopback: a connection whose TLS broke while it was not read (a record that does not
decrypt, found by `unread_has`) is still closed by `close()`, which raised before; a client's
close_notify is answered and the connection closed, as a plaintext client's FIN (hsbctl's request
over TLS took 1 s, its close waiting for ours until it gave up)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import ssl
import struct
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.wire import conn as connmod
from hsb.wire.authlink import AuthServerProtocol
from hsb.wire.client import request
from hsb.wire.conn import FramedProtocol
from hsb.wire.framing import encode
from hsb.wire.tls import TLS, TLSFiles
from tests.support.certs import client_context, make_ca, make_leaf
from tests.support.logrec import RecordingLog
from tests.support.procs import until

pytestmark = pytest.mark.timeout(30)


class Term(FramedProtocol):
    link = "terminal"
    dispatch = {"hello": "on_hello"}

    def on_hello(self, msg: dict[str, Any]) -> None:
        self.send({"t": "welcome"})


def cp_tls(d: Path) -> TLS:
    ca = make_ca(d)
    make_leaf(d, ca, "cp", "ec", "cp")
    make_leaf(d, ca, "hsbctl", "ec", "hsbctl")
    return TLS(TLSFiles(str(d / "ca.pem"), str(d / "cp.pem"), str(d / "cp.key")), terminals=True)


def queued(sock: Any) -> int:
    """Bytes in a socket's kernel receive queue, not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


async def test_close_drops_a_connection_whose_unread_bytes_do_not_decrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = RecordingLog()
    monkeypatch.setattr(connmod, "log", logs)
    tls = cp_tls(tmp_path)
    conns: list[Term] = []

    def make() -> Term:
        conns.append(Term(tls=tls.terminal_server))
        return conns[-1]

    srv = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(tmp_path), server_hostname="")
    try:
        p = await until(lambda: conns and conns[0]._tls is not None and conns[0]._tls.done and conns[0])
        p.pause_reading()  # not read (held messages at their bound), as the CP does
        with socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno())) as raw:
            raw.send(b"\x17\x03\x03\x00\x20" + b"\0" * 32)  # a record that does not decrypt, written into the stream
        server_sock = p.transport.get_extra_info("socket")
        await until(lambda: queued(server_sock) >= 37, what="the bad record in the server's receive queue")
        assert not p.unread_has("bye")  # (the terminal link asks this before it closes)
        p.close_with_error("idle_timeout", "nothing received")  # raised SSLEOFError, the connection left open
        assert p.closed and p.transport is not None and p.transport.is_closing()
        assert [e["reason"] for e in logs.events("tls_refused")] == [
            "a record that is not valid TLS after the handshake (DECRYPTION_FAILED_OR_BAD_RECORD_MAC): injected or damaged bytes"
        ]
        async with asyncio.timeout(5):  # dropped: the client sees its end (a reset), and nothing before it
            try:
                rest = await reader.read()
            except (ConnectionError, ssl.SSLError):
                rest = b""
        assert rest == b""
    finally:
        writer.transport.abort()
        srv.close()
        await srv.wait_closed()


class Admin(AuthServerProtocol):
    link = "admin"
    server_name = "cp"
    dispatch = {"status": "on_status"}

    def on_status(self, msg: dict[str, Any]) -> None:
        self.send({"t": "status", "data": {}})


async def test_a_clients_close_notify_is_answered_and_the_connection_closed(tmp_path: Path) -> None:
    tls = cp_tls(tmp_path)
    conns: list[Admin] = []

    def make() -> Admin:
        conns.append(Admin(secret=b"s" * 32, auth_timeout=5.0, idle_timeout=30.0, tls=tls.server))
        return conns[-1]

    srv = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    hsbctl = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "hsbctl.pem"), str(tmp_path / "hsbctl.key"))).client
    try:
        for _ in range(2):
            t0 = time.monotonic()
            ans = await request("127.0.0.1", port, b"s" * 32, {"t": "status"}, ssl=hsbctl)
            took = time.monotonic() - t0
            assert ans["t"] == "status"
            assert took < 0.8, f"request over TLS took {took:.3f}s: its close waited (1 s) for our close_notify"
        await until(lambda: all(c.closed for c in conns), what="the server's connections closed")
        assert not any(c.closed_here for c in conns)  # closed by the client, as its FIN would
    finally:
        srv.close()
        await srv.wait_closed()


class Refusing(FramedProtocol):
    link = "terminal"
    dispatch = {"hello": "on_hello"}

    def on_hello(self, msg: dict[str, Any]) -> None:
        self.close_with_error("unknown_terminal", "no such terminal")


def _read_to_end(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str]:
    """A blocking TLS client that sends a hello and reads to the end; how the end came: a clean
    TLS close (close_notify) or a truncation (an EOF without it, which OpenSSL 3 reports)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, suppress_ragged_eofs=False) as s:
        s.sendall(encode({"t": "hello", "terminal": "T1"}))
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ssl.SSLEOFError:
            return got, "truncated"
        return got, "close_notify"


async def test_a_connection_we_close_ends_with_our_close_notify(tmp_path: Path) -> None:
    tls = cp_tls(tmp_path)
    srv = await asyncio.get_running_loop().create_server(lambda: Refusing(tls=tls.terminal_server), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        got, end = await asyncio.wait_for(asyncio.to_thread(_read_to_end, port, client_context(tmp_path)), 10)
        assert b"unknown_terminal" in got  # the error frame came first
        assert end == "close_notify", "our close sent no close_notify: the client read a truncated TLS stream"
    finally:
        srv.close()
        await srv.wait_closed()
