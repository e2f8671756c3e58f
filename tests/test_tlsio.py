"""The server's words for a refused handshake (hsb.wire.tlsio). A client that speaks no TLS on a
TLS port: it must not depend on how this OpenSSL words the failure (3.2 and later say
RECORD_LAYER_FAILURE where 3.0 said WRONG_VERSION_NUMBER), or a plaintext terminal is closed
without its tls_required. A client's alert refusing our certificate (expired, another CA) names
ours, not the client's (it was called "its certificate has expired")."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from hsb.wire import tlsio
from tests.support.certs import cert, openssl_error, write

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("reason", ["RECORD_LAYER_FAILURE", "WRONG_VERSION_NUMBER", "SOMETHING_A_LATER_OPENSSL_SAYS"])
def test_a_first_byte_that_opens_no_handshake_is_plaintext_whatever_openssl_says(reason: str) -> None:
    hello = b"\x92\xa1t\xa5hello"  # a terminal's msgpack hello, unencrypted
    assert tlsio._not_tls(openssl_error(reason), hello[0])
    assert tlsio._reason(openssl_error(reason), hello[0]) == "not TLS (a plaintext client?)"


def test_a_handshake_that_fails_for_another_reason_is_not_called_plaintext() -> None:
    assert not tlsio._not_tls(openssl_error("UNSUPPORTED_PROTOCOL"), tlsio.TLS_HANDSHAKE)
    assert tlsio._not_tls(openssl_error("RECORD_LAYER_FAILURE"), None)  # (no byte seen: OpenSSL's words decide)


def test_server_tls_fed_plaintext_says_plaintext() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s = tlsio.ServerTLS(ctx)
    with pytest.raises(tlsio.TLSFailed) as ei:
        s.feed(b"\x92\xa1t\xa5hello\xa8terminal\xa6T00001" * 4)
    assert ei.value.plaintext


def server_reason(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """The reason ServerTLS gives for a handshake with a client (memory BIOs: every byte the
    client writes, its alert too, reaches the server)."""
    s = tlsio.ServerTLS(server_ctx)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client_ctx.wrap_bio(cin, cout)
    for _ in range(4):
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the client refused the server: its alert is in cout
        try:
            cin.write(s.feed(cout.read())[1])
        except tlsio.TLSFailed as exc:
            return exc.reason
    raise AssertionError("the handshake was not refused")


def contexts(d: Path, server_expired: bool, client_ca: str, client_cert: str | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = cert("test CA", None, ca=True)
    write(d, "ca", ca)
    write(d, "cp", cert("cp", ca, starts_in=-dt.timedelta(days=40) if server_expired else dt.timedelta(0)))
    write(d, "other-ca", cert("other CA", None, ca=True))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cp.pem", d / "cp.key")
    server.load_verify_locations(d / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_OPTIONAL
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(d / client_ca)
    if client_cert:
        write(d, "hsbctl", cert("hsbctl", ca, starts_in=-dt.timedelta(days=40)))  # expired
        client.load_cert_chain(d / "hsbctl.pem", d / "hsbctl.key")
    return server, client


@pytest.mark.parametrize(
    ("server_expired", "client_ca", "says"),
    [
        (True, "ca.pem", "the client refused our certificate: it has expired, by the client's clock (alert SSLV3_ALERT_CERTIFICATE_EXPIRED)"),
        (False, "other-ca.pem", "the client refused our certificate: it does not trust our CA (alert TLSV1_ALERT_UNKNOWN_CA)"),
    ],
)
def test_a_clients_alert_about_our_certificate_names_ours(tmp_path: Path, server_expired: bool, client_ca: str, says: str) -> None:
    reason = server_reason(*contexts(tmp_path, server_expired, client_ca))
    assert reason == says
    assert "its certificate" not in reason  # (that is the client's, which we refused)


def test_our_refusal_of_the_clients_certificate_names_the_clients(tmp_path: Path) -> None:
    assert server_reason(*contexts(tmp_path, False, "ca.pem", client_cert="expired")) == "its certificate has expired"
