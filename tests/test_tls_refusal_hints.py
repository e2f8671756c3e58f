"""What an operator reads when TLS is half set up (docs/tls.md §4, operations.md §19):

- a host whose own certificate the CP refuses (another CA: the CP's alert, unknown CA) logs
  `cp_link_refused` with a fix about **its own** certificate, not "check the CP's certificate"
  (that hint was the only one, whichever side refused);
- a daemon without TLS that a TLS client reaches (a terminal with `--tls`, a host with `[tls]`)
  logs `protocol_error` saying these are the bytes of a TLS handshake, not only a frame of
  369,295,618 bytes;
- `tls_refused_hint` on its own: an alert about a certificate names this host's certificate;
  other alerts and our own verify failures get no such hint;
- hsbctl with an expired certificate of its own is told to make a new one, not to "send
  SIGHUP" (the daemons' fix: hsbctl reads its files at every command).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsb.ctl.tls_cmd import make_ca_and_certs
from hsb.ops.refusals import tls_refused_hint
from hsb.wire.framing import FRAME_TOO_LARGE, LOGIN_MAX, Decoder, ProtocolError
from tests.support.procs import addr, free_port, log_events, start_cp, until, write_secret
from tests.test_tls import _host_a, cp_tls

pytestmark = pytest.mark.timeout(90)


def client_hello() -> bytes:
    """The first bytes any TLS client sends (a ClientHello), made by Python's own ssl."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="cp")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_a_tls_client_hello_at_a_plaintext_port_is_named_as_tls() -> None:
    hello = client_hello()
    assert hello[:2] == b"\x16\x03"
    with pytest.raises(ProtocolError) as exc:
        Decoder(first_max=LOGIN_MAX).feed(hello)
    assert exc.value.code == FRAME_TOO_LARGE
    assert "exceeds the maximum" in exc.value.msg and "TLS handshake" in exc.value.msg and "[tls]" in exc.value.msg, exc.value.msg
    # a plaintext frame too large for a login is not taken for TLS
    with pytest.raises(ProtocolError) as plain:
        Decoder(first_max=LOGIN_MAX).feed((LOGIN_MAX + 1).to_bytes(4, "big") + b"x" * 8)
    assert plain.value.code == FRAME_TOO_LARGE and "TLS" not in plain.value.msg, plain.value.msg


def test_only_an_alert_about_a_certificate_names_this_hosts_certificate() -> None:
    for alert in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        hint = tls_refused_hint(SimpleNamespace(reason=alert), "the CP at 127.0.0.1:1")  # type: ignore[arg-type]
        assert hint is not None and "refused this host's own certificate" in hint and alert in hint, (alert, hint)
    for other in ("TLSV1_ALERT_PROTOCOL_VERSION", "CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", ""):
        assert tls_refused_hint(SimpleNamespace(reason=other), "x") is None, other  # type: ignore[arg-type]
    plain = tls_refused_hint(SimpleNamespace(reason="WRONG_VERSION_NUMBER"), "the CP")  # type: ignore[arg-type]
    assert plain is not None and "speaks plaintext" in plain


async def test_a_host_whose_own_certificate_the_cp_refuses_is_told_to_look_at_its_own(tmp_path: Path) -> None:
    good, other, mixed = tmp_path / "tls", tmp_path / "other-ca", tmp_path / "mixed"
    make_ca_and_certs(good, ["cp", "host-a"])
    make_ca_and_certs(other, ["host-a"])
    mixed.mkdir()
    # host-a trusts both CAs (so it trusts the CP), but its certificate is of the CA the CP lacks
    (mixed / "ca.pem").write_bytes((good / "ca.pem").read_bytes() + (other / "ca.pem").read_bytes())
    for suffix in (".pem", ".key"):
        (mixed / f"host-a{suffix}").write_bytes((other / f"host-a{suffix}").read_bytes())
    (mixed / "host-a.key").chmod(0o600)
    cp = start_cp(tmp_path / "cp", terminals=2, tls=cp_tls(good, terminals=False))
    host = None
    try:
        host = _host_a(tmp_path, cp, mixed, f"127.0.0.1:{free_port()}")

        def refused() -> list[dict[str, object]]:
            return [e for e in log_events(host.log) if e.get("event") == "cp_link_refused"]

        got = (await until(refused, 20, what="cp_link_refused in the host's log"))[0]
        assert "UNKNOWN_CA" in str(got["reason"]), got
        msg = str(got["msg"])
        assert "this host's own certificate" in msg and "check the CP's certificate" not in msg, got
        cp_side = [e for e in log_events(cp.log) if e.get("event") == "tls_refused" and e.get("link") == "host"]
        assert cp_side and "does not chain to our CA" in str(cp_side[0]["reason"]), cp_side
    finally:
        if host is not None:
            host.stop()
        cp.stop()


async def test_a_plaintext_cp_says_a_tls_terminal_speaks_tls(tmp_path: Path) -> None:
    cp = start_cp(tmp_path / "cp", terminals=2)
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection(*addr(cp.info["terminal"]), ssl=ctx), 10)

        def said() -> list[dict[str, object]]:
            return [e for e in log_events(cp.log) if e.get("event") == "protocol_error" and e.get("link") == "terminal"]

        got = (await until(said, 10, what="protocol_error in the CP's log"))[0]
        assert got.get("code") == FRAME_TOO_LARGE and "TLS handshake" in str(got.get("msg")), got
    finally:
        cp.stop()


def test_hsbctl_with_an_expired_certificate_is_not_told_to_send_sighup(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path / "tls"
    make_ca_and_certs(d, ["hsbctl"])
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsbctl")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hsbctl")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "hsbctl.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "hsbctl.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "hsbctl.key").chmod(0o600)
    write_secret(tmp_path)
    ctl = tmp_path / "ctl.toml"
    ctl.write_text(
        f'cp = "127.0.0.1:{free_port()}"\nhosts = ["127.0.0.1:{free_port()}"]\nsecret_file = "secret"\n'
        f'tls = {{ ca_file = "{d / "ca.pem"}", cert_file = "{d / "hsbctl.pem"}", key_file = "{d / "hsbctl.key"}" }}\n'
    )
    r = subprocess.run([sys.executable, "-m", "hsb.ctl", "-c", str(ctl), "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    line = r.stderr.strip()
    assert line.startswith("error: tls.cert_file:") and "days ago" in line and "make a new one" in line, line
    assert "SIGHUP" not in line and "Traceback" not in r.stdout + r.stderr, line
