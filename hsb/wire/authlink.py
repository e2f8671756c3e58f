"""Server side of the challenge-response handshake (docs/protocol.md §2).

`AuthServerProtocol` sends the challenge when the connection opens and accepts
nothing but `auth` until the answer checks out; then it dispatches through the
subclass's table. Unauthenticated connections are dropped after `auth_timeout`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from hsb import LINK_PROTOCOL, __version__
from hsb.wire import auth
from hsb.wire.conn import FIELD_ERRORS, PROTOCOL_ERRORS, FramedProtocol, require
from hsb.wire.framing import ProtocolError

log = structlog.get_logger("hsb.wire")


class AuthServerProtocol(FramedProtocol):
    """Subclasses set `link` ("host", "peer", "admin"), `dispatch`, and implement `authenticated()`."""

    server_name: str = "hsb"
    hold_until_vouched = True  # an unauthenticated peer gets one frame decoded, its auth, no more
    tls_first = True  # host, peer and admin links: their handshakes go ahead of the terminals'
    # the level of `link_authenticated`: hsbctl's admin links say it at debug, as monitoring may
    # ask every few seconds (each daemon then logged ~2.8 MB a day of nothing else in a quiet pair)
    quiet_authenticated = False  # (True: said at debug)

    def __init__(self, *, secret: bytes, auth_timeout: float, idle_timeout: float | None = None, **kw: Any) -> None:
        super().__init__(known_types={*self.dispatch, "auth"}, idle_timeout=auth_timeout, **kw)
        self._secret = secret
        self._nonce = auth.new_nonce()
        self._after_auth_idle = idle_timeout
        self._auth_timeout = auth_timeout
        self.authed = False
        self.name = "?"
        self.last_rx = time.monotonic()

    def refusal(self, name: str) -> tuple[str, str] | None:
        """(code, why) to refuse a link that authenticated as `name` in place of `auth_ok`, or
        None to take it (the peer link: another host than the peer). The subclass logs it."""
        return None

    def auth_ok_extra(self) -> dict[str, Any]:
        """More for the `auth_ok` frame (the CP's host link: its journal generation)."""
        return {}

    def on_open(self) -> None:
        self.set_deadline(self._auth_timeout)  # authenticated within auth_timeout of the connect, however slowly bytes arrive
        self.send({"t": "challenge", "nonce": self._nonce, "server": self.server_name, "proto": LINK_PROTOCOL, "version": __version__})

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)

    def _handle(self, msg: dict[str, Any]) -> None:
        if self.authed:
            super()._handle(msg)
            return
        try:
            self._authenticate(msg)
        except FIELD_ERRORS as exc:
            self.auth_failed("auth_failed", f"an auth frame of the wrong shape: {type(exc).__name__}", cause="version")

    def _authenticate(self, msg: dict[str, Any]) -> None:
        if msg["t"] != "auth":
            self.auth_failed("auth_required", "authenticate first: the only frame accepted now is 'auth'")
            return
        try:
            name = require(msg, "name", str)
            link = require(msg, "link", str)
            mac = require(msg, "mac", bytes)
        except ProtocolError as exc:
            self.auth_failed("auth_failed", exc.msg, cause="version")
            return
        if link != self.link:
            # (`serves`: the client names the listener it should be pointed at, hsb.ops.refusals)
            self.auth_failed("auth_failed", f"this port serves the {self.link} link, not {link[:32]!r}", cause="link", serves=self.link)
            return
        if not auth.verify(self._secret, self._nonce, link, name, mac):
            self.auth_failed("auth_failed", "wrong answer to the challenge (secret differs?)", cause="secret")
            return
        theirs = msg.get("proto", 1)
        if theirs != LINK_PROTOCOL or type(theirs) is not int:  # (5.0, True: not a daemon's)
            shown = theirs if type(theirs) is int else repr(theirs)[:40]  # a proto of "5" is not protocol 5
            self.auth_failed(
                "version_mismatch",
                f"{name[:64]} speaks link protocol {shown} (hsb {str(msg.get('version', 'older than 0.4'))[:20]}), {self.server_name}"
                f" speaks {LINK_PROTOCOL} (hsb {__version__}): install the same hsb version everywhere",
            )
            return
        names = self.tls_peer_names()
        if names is not None and name not in names:  # TLS: the certificate must be the one of the name claimed
            self.auth_failed(
                "tls_name_mismatch",
                f"the link claims to be {name[:64]!r} but its certificate is for {sorted(names)[:4] or 'nobody (none presented)'}",
            )
            return
        refused = self.refusal(name[:64])
        if refused is not None:  # (one line, logged by the subclass; only this connection is closed)
            PROTOCOL_ERRORS[(self.link, refused[0])] += 1
            self.close_with_error(*refused)
            return
        self._nonce = b""  # used once
        self.authed = True
        self.clear_deadline()
        self.name = name[:64]
        self.set_idle_timeout(self._after_auth_idle)
        theirs_nonce = msg.get("nonce")
        proof: dict[str, Any] = {}
        if isinstance(theirs_nonce, bytes) and len(theirs_nonce) == auth.NONCE_BYTES:  # the client checks us too
            proof["mac"] = auth.answer(self._secret, theirs_nonce, auth.server_role(link), self.server_name)
        self.send({"t": "auth_ok", "server": self.server_name, **proof, **self.auth_ok_extra()})
        (log.debug if self.quiet_authenticated else log.info)(
            "link_authenticated", link=self.link, peer=self.peer, name=self.name
        )  # (a refusal: a warning)
        self.authenticated()
        self.release_held()  # what came behind the auth frame (a client waits for auth_ok, so normally nothing)

    def auth_failed(self, code: str, why: str, **extra: str) -> None:
        """Refused: an error frame, the connection closed. `extra`: `cause` ("link", "secret",
        "version") and `serves`, for the client's own line naming the fix (hsb.ops.refusals)."""
        log.warning("auth_failed", link=self.link, peer=self.peer, reason=why)
        PROTOCOL_ERRORS[(self.link, code)] += 1
        self.send({"t": "error", "code": code, "msg": why, **extra})
        self.close()

    def authenticated(self) -> None:
        pass
