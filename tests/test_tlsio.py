"""The CP's word for a client that speaks no TLS on a TLS port (hsb.wire.tlsio): it must not
depend on how this OpenSSL words the failure (3.2 and later say RECORD_LAYER_FAILURE where
3.0 said WRONG_VERSION_NUMBER), or a plaintext terminal is closed without its tls_required."""

from __future__ import annotations

import ssl

import pytest

from hsb.wire import tlsio

pytestmark = pytest.mark.timeout(10)


def _err(reason: str) -> ssl.SSLError:
    e = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')}")
    e.reason = reason  # type: ignore[misc]
    return e


@pytest.mark.parametrize("reason", ["RECORD_LAYER_FAILURE", "WRONG_VERSION_NUMBER", "SOMETHING_A_LATER_OPENSSL_SAYS"])
def test_a_first_byte_that_opens_no_handshake_is_plaintext_whatever_openssl_says(reason: str) -> None:
    hello = b"\x92\xa1t\xa5hello"  # a terminal's msgpack hello, unencrypted
    assert tlsio._not_tls(_err(reason), hello[0])
    assert tlsio._reason(_err(reason), hello[0]) == "not TLS (a plaintext client?)"


def test_a_handshake_that_fails_for_another_reason_is_not_called_plaintext() -> None:
    assert not tlsio._not_tls(_err("UNSUPPORTED_PROTOCOL"), tlsio.TLS_HANDSHAKE)
    assert tlsio._not_tls(_err("RECORD_LAYER_FAILURE"), None)  # (no byte seen: OpenSSL's words decide)


def test_server_tls_fed_plaintext_says_plaintext() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s = tlsio.ServerTLS(ctx)
    with pytest.raises(tlsio.TLSFailed) as ei:
        s.feed(b"\x92\xa1t\xa5hello\xa8terminal\xa6T00001" * 4)
    assert ei.value.plaintext
