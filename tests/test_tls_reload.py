"""A SIGHUP's TLS reload (hsb.wire.tls.TLS.reload), with real handshakes on loopback: new
connections get the new certificate even when its key type differs (loading an RSA pair into a
context that held an ECDSA one kept presenting the old certificate); files that cannot be used
leave the certificates in use serving, untouched (a load that failed half way left a context
with a certificate and no key); the client context of the process's links follows."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from hsb.wire import tls as tlsmod
from hsb.wire.tls import TLS, TLSFiles
from tests.support.certs import make_ca, make_leaf, name

pytestmark = pytest.mark.timeout(60)


async def presented(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> x509.Certificate:
    """The certificate a new connection to a listener made with `server_ctx` is shown."""
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)
    finally:
        srv.close()
        await srv.wait_closed()


async def test_a_reload_to_another_key_type_presents_the_new_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "old-ec", "ec", "cp")
    make_leaf(tmp_path, ca, "client", "ec", "client")
    t = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")))
    client = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))).client
    listener = t.server  # what a listener was made with at start
    got = await presented(listener, client)
    assert got.subject == name("old-ec")
    make_leaf(tmp_path, ca, "new-rsa", "rsa", "cp")  # the site's CA issues RSA
    assert t.reload() == []
    got = await presented(listener, client)
    assert got.subject == name("new-rsa"), got.subject
    assert isinstance(got.public_key(), rsa.RSAPublicKey)
    assert t.names == ["new-rsa"]


@pytest.mark.parametrize("race", [False, True], ids=["checked", "replaced-after-the-check"])
async def test_files_that_cannot_be_used_leave_the_certificates_in_use_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: bool) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    make_leaf(tmp_path, ca, "client", "ec", "client")
    make_leaf(tmp_path, ca, "other", "ec", "other")
    t = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")))
    client = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))).client
    listener, old_client = t.server, t.client
    (tmp_path / "cp.pem").write_bytes((tmp_path / "other.pem").read_bytes())  # half replaced: the key is cp's
    if race:  # the files looked fine when checked, and were replaced before they were loaded
        monkeypatch.setattr(tlsmod, "check_files", lambda f, reloads=True: [])
    try:
        errors = t.reload()
    except ssl.SSLError as exc:
        errors = [f"raised: {exc}"]
    assert errors and ("does not go with" in errors[0] or "could not be loaded" in errors[0]), errors
    if not race:
        assert str(tmp_path / "cp.pem") in errors[0], errors
    assert t.client is old_client and t.names == ["cp"]
    got = await presented(listener, client)  # still a full handshake with the certificate in use
    assert got.subject == name("cp")


async def test_the_bytes_kept_for_a_worker_forked_again_are_the_ones_loaded(tmp_path: Path) -> None:
    """hsbcpd's master keeps the TLS files' bytes a worker loaded, for the next worker should the
    files be broken by then: they are read once and loaded from that read, so a file replaced
    just after the load is not what is kept, and the kept bytes load as they did."""
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    make_leaf(tmp_path, ca, "client", "ec", "client")
    files = TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"))
    good = (tmp_path / "cp.pem").read_bytes()
    t = TLS(files)
    assert t.pem["cert_file"] == good and set(t.pem) == {"ca_file", "cert_file", "key_file"}
    (tmp_path / "cp.pem").write_text("not a certificate\n")  # broken since
    with pytest.raises(tlsmod.TLSError):
        TLS(files)
    again = TLS(files, pem=t.pem)
    assert again.names == ["cp"] and again.files == files  # (a reload reads the files themselves)
    client = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))).client
    got = await presented(again.server, client)
    assert got.subject == name("cp")


async def test_the_processs_client_context_follows_a_reload(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "host-a", "ec", "a")
    t = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "a.pem"), str(tmp_path / "a.key")))
    tlsmod.set_default_client(t.client)
    try:
        make_leaf(tmp_path, ca, "host-a", "ec", "a")
        assert t.reload() == []
        assert tlsmod.default_client() is t.client
    finally:
        tlsmod.set_default_client(None)


async def test_a_ca_taken_out_of_ca_file_is_no_longer_trusted_after_a_reload(tmp_path: Path) -> None:
    """Step 4 of a CA change: the old CA out of `ca_file`, a reload, and a client whose
    certificate the old CA signed is refused by the listener made at start."""
    d_old, d_new, d = tmp_path / "old", tmp_path / "new", tmp_path / "cp"
    for x in (d_old, d_new, d):
        x.mkdir()
    old_ca, new_ca = make_ca(d_old, "CA old"), make_ca(d_new, "CA new")
    make_leaf(d, new_ca, "cp", "ec", "cp")
    make_leaf(d_old, old_ca, "client", "ec", "client")
    both = (d_old / "ca.pem").read_bytes() + (d_new / "ca.pem").read_bytes()
    (d / "ca.pem").write_bytes(both)
    (d_old / "both.pem").write_bytes(both)
    t = TLS(TLSFiles(str(d / "ca.pem"), str(d / "cp.pem"), str(d / "cp.key")))
    client = TLS(TLSFiles(str(d_old / "both.pem"), str(d_old / "client.pem"), str(d_old / "client.key"))).client

    async def greeting() -> bytes:
        async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"hi")
            await w.drain()
            w.close()

        srv = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=t.server)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=client)
            try:
                return await asyncio.wait_for(reader.read(2), 10)
            except (ssl.SSLError, ConnectionError):
                return b""  # refused (TLS 1.3: the server's verdict comes after the client's handshake)
            finally:
                writer.close()
        finally:
            srv.close()
            await srv.wait_closed()

    assert await greeting() == b"hi"
    (d / "ca.pem").write_bytes((d_new / "ca.pem").read_bytes())
    assert t.reload() == []
    assert await greeting() == b""


async def test_no_session_made_before_a_reload_is_resumed_after_it(tmp_path: Path) -> None:
    """A client that keeps its TLS session (Java does) gets a full handshake after a reload, with
    the certificates now in use: no session tickets are issued."""
    import socket as socketmod

    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    make_leaf(tmp_path, ca, "client", "ec", "client")
    t = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")))
    client = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))).client

    async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        await w.drain()

    def connect(session: Any = None) -> tuple[ssl.SSLSession | None, bool | None]:
        """A blocking client (on a thread): its session once the greeting came, and whether it resumed."""
        with socketmod.create_connection(("127.0.0.1", port), timeout=10) as raw, client.wrap_socket(raw, session=session) as s:
            assert s.recv(2) == b"hi"  # (TLS 1.3: the server's tickets, if any, came before this)
            return s.session, s.session_reused

    srv = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=t.server)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        session, _ = await loop.run_in_executor(None, connect)
        make_leaf(tmp_path, ca, "cp", "ec", "cp")
        assert t.reload() == []
        _, reused = await loop.run_in_executor(None, connect, session)
        assert not reused, "a session made before the reload was resumed after it"
    finally:
        srv.close()
        await srv.wait_closed()


def _handshake(port: int, client_ctx: ssl.SSLContext, session: Any = None) -> tuple[ssl.SSLSession | None, bool | None]:
    """A blocking client's handshake (only it can offer a saved session): its session, reused?"""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, client_ctx.wrap_socket(raw, session=session) as s:
        s.recv(1)  # the server closes: the handshake is complete, its ticket or id is in
        return s.session, s.session_reused


async def test_tls_1_2_is_refused_by_default_for_a_session_id_would_outlive_a_reload(tmp_path: Path) -> None:
    """A TLS 1.2 client can resume a session by its id from OpenSSL's server cache, which `ssl`
    cannot turn off: after a SIGHUP that took its CA out it would still be let in, for up to
    300 s, its certificate not checked again. So the listeners take TLS 1.3 only (no tickets: no
    resumption at all) unless `min_version = "1.2"`, whose cost this shows."""
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    make_leaf(tmp_path, ca, "client", "ec", "client")
    client = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))).client
    client.maximum_version = ssl.TLSVersion.TLSv1_2  # a client that offers TLS 1.2 only
    loop = asyncio.get_running_loop()

    async def listen(t: TLS) -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=t.server)

    default = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")))
    srv = await listen(default)
    try:
        with pytest.raises(ssl.SSLError):
            await loop.run_in_executor(None, _handshake, srv.sockets[0].getsockname()[1], client)
    finally:
        srv.close()
        await srv.wait_closed()
    lax = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"), "1.2"))
    srv = await listen(lax)
    try:
        port = srv.sockets[0].getsockname()[1]
        session, _ = await loop.run_in_executor(None, _handshake, port, client)
        other = tmp_path / "other"
        other.mkdir()
        new_ca = make_ca(other)  # the CA the CP trusts replaced: the client's certificate is not trusted any more
        (tmp_path / "ca.pem").write_bytes((other / "ca.pem").read_bytes())
        make_leaf(tmp_path, new_ca, "cp", "ec", "cp")  # (and the CP's own from the new CA: one from the old is refused)
        assert lax.reload() == []
        with pytest.raises((ssl.SSLError, ConnectionError)):  # a full handshake: the CP refuses it
            await loop.run_in_executor(None, _handshake, port, client)
        _, reused = await loop.run_in_executor(None, _handshake, port, client, session)
        assert reused  # min_version 1.2: let in by its session id, its certificate not checked again
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.timeout(20)
def test_the_listeners_refuse_renegotiation_and_tickets_before_and_after_a_reload(tmp_path: Path) -> None:
    """With TLS 1.2 allowed (`min_version = "1.2"`), a client could make a listener run
    handshake after handshake on one connection (renegotiation: no deadline covers it), or
    resume a session made before a reload. Both listeners' contexts refuse both, and so do the
    contexts a reload makes."""
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    t = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"), min_version="1.2"))
    first = (t.server, t.terminal_server)
    assert t.reload() == []
    for ctx in (*first, *t._current):
        assert ctx.options & ssl.OP_NO_RENEGOTIATION, ctx
        assert ctx.options & ssl.OP_NO_TICKET and ctx.num_tickets == 0, ctx
    assert t._current[0] is not first[0]  # (the reload's own contexts were checked too)
