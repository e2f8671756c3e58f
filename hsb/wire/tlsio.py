"""The server side of TLS as a sans-IO layer (`ssl.MemoryBIO`): bytes from the network in,
plaintext out; plaintext in, bytes for the network out. `hsb.wire.conn.FramedProtocol` runs it
itself instead of asking the event loop for a TLS transport, so that a handshake that fails (a
plaintext client, a wrong CA, an expired or missing certificate, a client that says nothing)
reaches the protocol, which names the peer and the reason in one log line: uvloop's own TLS
drops such connections without a word.
"""

from __future__ import annotations

import re
import ssl


class TLSFailed(Exception):
    """The handshake or a record failed: `reason` says why in a few words."""

    def __init__(self, reason: str, alert: bytes = b"", plaintext: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert  # the TLS alert to send the peer before the connection closes: it then knows why
        self.plaintext = plaintext  # what came is no TLS at all: a client speaking plaintext (OpenSSL sends no alert)


def _reason(exc: ssl.SSLError, first: int | None = None) -> str:
    verify = str(getattr(exc, "verify_message", "") or "")  # we refused the client's certificate
    if "expired" in verify:
        return "its certificate has expired"
    if "not yet valid" in verify:
        return "its certificate is not valid yet (a clock off?)"
    if verify:
        return f"its certificate does not chain to our CA ({verify})"
    if _not_tls(exc, first):
        return "not TLS (a plaintext client?)"
    r = (exc.reason or str(exc)).lower().replace("_", " ")
    if "certificate required" in r or "peer did not return a certificate" in r:
        return "no client certificate (mutual TLS: the client must present one)"
    alert = _alert_received(exc)
    if alert:  # the client's alert: it refused the handshake, most often our certificate
        for name, what in _REFUSED_OURS:
            if name in alert:
                return f"the client refused our certificate: {what} (alert {alert})"
        return f"the client ended the handshake (alert {alert})"
    if "certificate verify failed" in r or "unable to get local issuer" in r:
        return f"its certificate does not chain to our CA ({exc.reason or exc})"
    return str(exc.reason or exc)


# the alerts a client sends when it refuses the certificate this server presented (OpenSSL's
# names for them, as received), and what each says of ours
_REFUSED_OURS = (
    ("CERTIFICATE_EXPIRED", "it has expired, by the client's clock"),
    ("UNKNOWN_CA", "it does not trust our CA"),
    ("BAD_CERTIFICATE", "it finds it bad, perhaps not valid yet by the client's clock"),
    ("DECRYPT_ERROR", "its signature does not check against the client's CA, another CA of our CA's name?"),
    ("UNSUPPORTED_CERTIFICATE", "it cannot be used for a server, its extendedKeyUsage?"),
    ("CERTIFICATE_REVOKED", "it is revoked"),
    ("CERTIFICATE_UNKNOWN", "it does not accept it"),
)
_ALERT = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_[A-Z0-9_]+$")


def _alert_received(exc: ssl.SSLError) -> str:
    """The name of the TLS alert the peer sent, which ended the handshake, or "" (OpenSSL names a
    received alert SSLV3_ALERT_*, TLSV1_ALERT_* or TLSV13_ALERT_*; one this side sends is not)."""
    reason = str(exc.reason or "")
    return reason if _ALERT.match(reason) else ""


TLS_HANDSHAKE = 0x16  # the content type of a TLS record that opens a connection (a ClientHello)
# OpenSSL's reasons for a peer that speaks no TLS (plaintext where a TLS record should be; 3.2 and
# later say RECORD_LAYER_FAILURE): for a server, a client's; for a client, a server's answer
NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})
_NOT_TLS_WORDS = tuple(r.lower().replace("_", " ") for r in NOT_TLS_REASONS)


def _not_tls(exc: ssl.SSLError, first: int | None) -> bool:
    """The client does not speak TLS: its first byte opens no TLS handshake record (whatever
    words this OpenSSL has for it: RECORD_LAYER_FAILURE from 3.2), or OpenSSL's words say so."""
    if first is not None and first != TLS_HANDSHAKE:
        return True
    r = (exc.reason or str(exc)).lower().replace("_", " ")
    return any(w in r for w in _NOT_TLS_WORDS)


class ServerTLS:
    """One server connection's TLS state (see the module docstring)."""

    __slots__ = ("_in", "_out", "obj", "done", "started", "first", "failed", "peer_closed", "_early")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.done = False  # handshake complete
        self.started = False  # the client sent something
        self.first: int | None = None  # its first byte
        # why the TLS state broke (a handshake refused, a record that did not decrypt), or "":
        # once broken, nothing more can be sent or read on it
        self.failed = ""
        self.peer_closed = False  # its close_notify came: it sends nothing more (its EOF)
        self._early: list[bytes] = []  # plaintext sent before the handshake ended: goes out after it

    def keep(self, data: bytes) -> None:
        """Network bytes in, for a later `feed` (a handshake waiting for its turn)."""
        if not data:
            return
        if self.first is None:
            self.first = data[0]
        self.started = True
        self._in.write(data)

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Network bytes in: (plaintext, bytes to send back). Raises TLSFailed (and `failed` says
        why from then on)."""
        if self.failed:
            raise TLSFailed(self.failed)
        if not self.done:
            self.keep(data)
            try:
                self.obj.do_handshake()
                self.done = True
                for plaintext in self._early:  # (sent while the handshake ran: wrap kept it)
                    self.obj.write(plaintext)
                self._early.clear()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            except ssl.SSLError as exc:
                self.failed = _reason(exc, self.first)
                raise TLSFailed(self.failed, self._out.read(), plaintext=_not_tls(exc, self.first)) from None
        else:
            self._in.write(data)
        chunks = []
        while True:
            try:
                chunk = self.obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # its close_notify
                self.peer_closed = True
                break
            except ssl.SSLError as exc:  # a record that does not decrypt: injected or damaged bytes
                self.failed = f"a record that is not valid TLS after the handshake ({exc.reason or exc}): injected or damaged bytes"
                raise TLSFailed(self.failed, self._out.read()) from None
            if not chunk:  # its close_notify (Python's read says it so: no data, no SSLWantReadError)
                self.peer_closed = True
                break
            chunks.append(chunk)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), self._out.read()

    def wrap(self, plaintext: bytes) -> bytes:
        """Plaintext out: the bytes to send; none once the TLS state has broken (`failed`: OpenSSL
        refuses to write on it), which the caller checks and then drops the connection. Before the
        handshake ends, none either: the plaintext goes out with the handshake's last bytes."""
        if self.failed:
            return b""
        if not self.done:  # (OpenSSL cannot write yet: it wants the client's next flight)
            self._early.append(plaintext)
            return b""
        try:
            self.obj.write(plaintext)
        except ssl.SSLError as exc:
            self.failed = f"TLS cannot send on it any more ({exc.reason or exc})"
            return b""
        return self._out.read()

    def shutdown(self) -> bytes:
        """Our close_notify, the bytes to send (after the peer's, which completes the close)."""
        if self.failed:
            return b""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # (the peer's close_notify not come: ours goes all the same)
        except ssl.SSLError as exc:
            self.failed = f"TLS cannot send on it any more ({exc.reason or exc})"
            return b""
        return self._out.read()
