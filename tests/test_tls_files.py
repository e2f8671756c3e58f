"""The TLS files a daemon is given, checked before they are used (hsb.wire.tls.check_files):
each problem one line naming the file and the fix, never a prompt, never a traceback; and a
terminal CA trusted on the terminal listener only (`[tls] terminal_ca_file`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsb.config import ConfigError, load
from hsb.cp.config import CPConfig
from hsb.term.main import _ssl
from hsb.wire.tls import TLS, TLSError, TLSFiles, check_files
from tests.support.certs import cert, make_ca, make_leaf, write

pytestmark = pytest.mark.timeout(60)


def files(d: Path, stem: str = "cp", ca: str = "ca.pem", terminal_ca: str = "") -> TLSFiles:
    f = TLSFiles(str(d / ca), str(d / f"{stem}.pem"), str(d / f"{stem}.key"))
    if terminal_ca:
        f.terminal_ca_file = str(d / terminal_ca)
    return f


def test_good_files_have_no_problem(tmp_path: Path) -> None:
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    assert check_files(files(tmp_path)) == []


def test_a_key_with_a_passphrase_is_refused_without_a_prompt(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    write(tmp_path, "cp", cert("cp", ca), password=b"secret")
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and "is protected by a passphrase" in errors[0] and str(tmp_path / "cp.key") in errors[0], errors
    assert "openssl pkey" in errors[0]
    with pytest.raises(TLSError, match="passphrase"):
        TLS(files(tmp_path))
    # hsbterm's --cert/--key: a usage error, not a traceback
    with pytest.raises(click.BadParameter, match="passphrase"):
        _ssl(True, str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"))


def test_a_reload_to_a_key_with_a_passphrase_keeps_the_certificates_in_use(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    t = TLS(files(tmp_path))
    client = t.client
    write(tmp_path, "cp", cert("cp", ca), password=b"secret")
    errors = t.reload()
    assert errors and "passphrase" in errors[0] and str(tmp_path / "cp.key") in errors[0], errors
    assert t.client is client


def test_files_that_are_not_pem_are_said_so_not_called_a_mismatch(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    der = x509.load_pem_x509_certificate((tmp_path / "cp.pem").read_bytes()).public_bytes(serialization.Encoding.DER)
    (tmp_path / "cp.pem").write_bytes(der)
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and "is not a PEM certificate or key" in errors[0] and "does not go with" not in errors[0], errors
    # hsbterm: a one-line usage error naming the files
    with pytest.raises(click.UsageError, match="cannot use --ca"):
        _ssl(True, str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"))


def test_a_key_of_another_certificate_is_a_mismatch(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    make_leaf(tmp_path, ca, "other", "ec", "other")
    (tmp_path / "cp.key").write_bytes((tmp_path / "other.key").read_bytes())
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and "does not go with" in errors[0], errors


def test_a_folder_given_as_a_file_is_not_a_regular_file(tmp_path: Path) -> None:
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    f = files(tmp_path)
    f.ca_file = str(tmp_path)
    errors = check_files(f)
    assert errors == [
        f"tls.ca_file: {tmp_path} is not a regular file; give the path of a PEM file;"
        f" whether {tmp_path / 'cp.pem'} was issued by a CA in it is checked once it can be read"
    ], errors


def test_a_certificate_of_another_ca_is_refused_before_a_peer_refuses_it(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    make_ca(ours, "our CA")
    other = make_ca(theirs, "their CA")
    make_leaf(ours, other, "cp", "ec", "cp")
    errors = check_files(files(ours))
    assert len(errors) == 1 and f"was not issued by a CA in {ours / 'ca.pem'}" in errors[0], errors
    # the same CA's name on another key (a CA made again): refused too, not taken by its name
    make_ca(theirs, "our CA")
    make_leaf(ours, make_ca(theirs, "our CA"), "cp", "ec", "cp")
    assert any("was not issued by a CA" in e for e in check_files(files(ours)))


def test_a_certificate_with_its_intermediate_in_cert_file_is_accepted(tmp_path: Path) -> None:
    root = cert("root CA", None, ca=True)
    (tmp_path / "ca.pem").write_bytes(root[1].public_bytes(serialization.Encoding.PEM))
    mid = cert("intermediate CA", root, ca=True)
    write(tmp_path, "cp", cert("cp", mid), mid[1])
    assert check_files(files(tmp_path)) == []
    write(tmp_path, "cp", cert("cp", mid))  # without the intermediate: no chain to the CA
    assert any("was not issued by a CA" in e for e in check_files(files(tmp_path)))


def test_a_certificate_not_valid_yet_is_refused_naming_the_clock(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    write(tmp_path, "cp", cert("cp", ca, starts_in=dt.timedelta(days=3)))
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and "is not valid until" in errors[0] and "clock" in errors[0], errors


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    """Whether a client with `client_ctx` gets a byte through a listener made with `server_ctx`."""

    async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=server_ctx)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=client_ctx)
        try:
            return await asyncio.wait_for(reader.read(2), 10) == b"hi"
        except (ssl.SSLError, ConnectionError):
            return False  # TLS 1.3: the server's verdict on the client comes after the client's handshake
        finally:
            writer.close()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_a_terminal_ca_is_trusted_on_the_terminal_listener_only(tmp_path: Path) -> None:
    daemons, terms = tmp_path / "daemons", tmp_path / "terms"
    daemons.mkdir()
    terms.mkdir()
    make_leaf(daemons, make_ca(daemons, "daemons CA"), "cp", "ec", "cp")
    make_leaf(terms, make_ca(terms, "terminals CA"), "T00001", "ec", "T00001")
    (daemons / "terminal-ca.pem").write_bytes((terms / "ca.pem").read_bytes())
    cp = TLS(files(daemons, terminal_ca="terminal-ca.pem"), terminals=True)
    terminal = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    terminal.check_hostname = False
    terminal.load_verify_locations(daemons / "ca.pem")
    terminal.load_cert_chain(terms / "T00001.pem", terms / "T00001.key")
    assert await _handshake(cp.terminal_server, terminal)
    assert not await _handshake(cp.server, terminal)  # the host and admin listeners' context
    # a reload keeps it so
    assert cp.reload() == []
    assert await _handshake(cp.terminal_server, terminal)
    assert not await _handshake(cp.server, terminal)


def test_terminal_ca_file_without_terminals_is_a_config_error(tmp_path: Path) -> None:
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    (tmp_path / "cp.toml").write_text(
        '[cp]\nname = "cp"\nsecret_file = "s"\n[[terminals]]\nname = "T00001"\n'
        '[tls]\nca_file = "ca.pem"\ncert_file = "cp.pem"\nkey_file = "cp.key"\nterminal_ca_file = "ca.pem"\n'
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "cp.toml", CPConfig)
    assert len(err.value.lines()) == 1 and "terminal_ca_file is set but terminals = false" in err.value.lines()[0], err.value.lines()


def test_independent_problems_of_the_files_come_in_one_run(tmp_path: Path) -> None:
    """A key readable by others hid a certificate of another CA (the CA check ran only when
    nothing else was wrong), and a ca_file that does not exist hid the key's mode: each came
    in the run after the first was fixed. Each check runs now when its own files can be read;
    one that cannot run says so on the line of the file it waits for."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    make_ca(ours, "our CA")
    make_leaf(ours, make_ca(theirs, "their CA"), "cp", "ec", "cp")
    (ours / "cp.key").chmod(0o644)
    errors = check_files(files(ours))
    key, crt, ca = ours / "cp.key", ours / "cp.pem", ours / "ca.pem"
    assert len(errors) == 2, errors
    assert f"tls.key_file: {key} is accessible by group or others (mode 644); run 'chmod 600 {key}'" in errors
    assert any(e.startswith(f"tls.cert_file: {crt} was not issued by a CA in {ca}") for e in errors), errors
    # no ca_file: the key's mode is said all the same, and the CA check waits for the file, said so
    ca.unlink()
    errors = check_files(files(ours))
    assert len(errors) == 2 and errors[1].startswith(f"tls.key_file: {key} is accessible by group or others"), errors
    assert errors[0].startswith(f"tls.ca_file: {ca} does not exist") and f"whether {crt} was issued by a CA" in errors[0], errors
    # no cert_file: the key's mode is said, and what waits for the certificate is named
    make_ca(ours, "our CA")
    crt.unlink()
    errors = check_files(files(ours))
    assert len(errors) == 2 and errors[1].startswith(f"tls.key_file: {key} is accessible by group or others"), errors
    assert errors[0].startswith(f"tls.cert_file: {crt} does not exist") and "checked once it can be read" in errors[0], errors


def test_the_cp_check_says_the_key_mode_and_the_ca_in_one_run(tmp_path: Path) -> None:
    """The reviewer's config: a key in mode 644 and a certificate of another CA, both said by one
    hsbcpd --check-config."""
    other = tmp_path / "other"
    other.mkdir()
    make_ca(tmp_path, "our CA")
    make_leaf(tmp_path, make_ca(other, "their CA"), "cp", "ec", "cp")
    (tmp_path / "cp.key").chmod(0o644)
    (tmp_path / "secret").write_text("x" * 64)
    (tmp_path / "secret").chmod(0o600)
    (tmp_path / "cp.toml").write_text(
        f'[cp]\nsecret_file = "secret"\njournal = "{tmp_path / "j"}"\n'
        '[tls]\nca_file = "ca.pem"\ncert_file = "cp.pem"\nkey_file = "cp.key"\n[[terminals]]\nname = "A"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "hsb.cp", "--config", str(tmp_path / "cp.toml"), "--check-config"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 78 and "chmod 600" in r.stderr and "was not issued by a CA in" in r.stderr, r.stderr
