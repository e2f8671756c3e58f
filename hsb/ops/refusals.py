"""Saying a refusal once: a link refused for a wrong secret or version is tried again slowly,
and logged the first time and then once a minute with a count, not at every attempt. The fix
named with it follows the reason (`refusal_hint`): a port of another link names the config key
and the listener it should point at, a wrong answer the secret, a version the versions. A port
that answers but is no hsb link at all (`not_hsb`: the CP's terminal port) is said the same way."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from hsb.wire.client import FrameStream, NoChallenge
from hsb.wire.framing import ProtocolError
from hsb.wire.tlsio import NOT_TLS_REASONS

log = structlog.get_logger("hsb.ops")

EVERY_S = 60.0
WHY_MAX = 300  # characters of a refusal's reason logged (the far end's text: not to be trusted for its size)
DEFAULT_HINT = "tried again every 5 s; fix the secret or install the same hsb version on both sides"
# the listener that serves each authenticated link, for a hint naming the one to point at
SERVED_BY = {"host": "the CP's host_listen", "peer": "a host's peer_listen", "admin": "an admin_listen (the CP's or a host's)"}
_SERVES = re.compile(r"this port serves the (\w+) link")  # (the text of a daemon that does not send `serves` yet)


class RefusalLog:
    """`on_said(text)`, if given, is told each line logged (the reason and its fix), and
    `on_said(None)` when the refusals end: a host's status shows the problem as its last error."""

    def __init__(
        self,
        event: str,
        hint: str = DEFAULT_HINT,
        *,
        level: str = "error",
        on_said: Callable[[str | None], None] | None = None,
        **fields: Any,
    ) -> None:
        self.event = event
        self.hint = hint
        self.level = level
        self.on_said = on_said
        self.fields = fields
        self.last: str | None = None
        self.count = 0
        self.logged_at = 0.0

    def seen(self, why: str, hint: str | None = None) -> None:
        """A refusal for `why`; `hint`: its fix, when it depends on the reason (else the log's own)."""
        self.count += 1
        why = why if len(why) <= WHY_MAX else why[:WHY_MAX] + "…"  # (what answers may be anyone: its text is bounded)
        now = time.monotonic()
        if why != self.last or now - self.logged_at >= EVERY_S:
            msg = hint or self.hint
            getattr(log, self.level)(self.event, reason=why, refusals=self.count, **self.fields, msg=msg)
            self.last, self.logged_at = why, now
            if self.on_said is not None:
                self.on_said(f"{why} ({msg})")

    def clear(self) -> None:
        if self.count:
            log.info(self.event + "_cleared", refusals=self.count, **self.fields)
            if self.on_said is not None:
                self.on_said(None)
        self.last, self.count = None, 0


def tls_plaintext_hint(exc: BaseException, where: str) -> str | None:
    """The fix when our TLS handshake met a daemon that speaks plaintext (its challenge came
    back where the server's hello should be: WRONG_VERSION_NUMBER), or None: it is no
    certificate's fault, the other side has no `[tls]`."""
    reason = getattr(exc, "reason", None)
    if reason in NOT_TLS_REASONS - {"UNKNOWN_PROTOCOL"}:  # (a daemon's plaintext answer, not a stranger's)
        return f"{where} speaks plaintext: give it the same [tls] section (every daemon of the pair and the CP use TLS, or none)"
    return None


_ALERT_RECEIVED = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_[A-Z0-9_]+$")  # (OpenSSL's name for an alert the peer sent)


def tls_refused_hint(exc: BaseException, where: str) -> str | None:
    """The fix for a TLS handshake of this host's that failed, when the reason says more than the
    log's own hint (which is about the other side's certificate): a daemon that speaks plaintext
    (`tls_plaintext_hint`), or one that sent an alert about a certificate
    (SSLV3_ALERT_CERTIFICATE_EXPIRED, TLSV1_ALERT_UNKNOWN_CA): it refused **this** host's own
    certificate, the one to look at."""
    plain = tls_plaintext_hint(exc, where)
    if plain is not None:
        return plain
    alert = str(getattr(exc, "reason", None) or "")
    if not _ALERT_RECEIVED.match(alert) or not ("CERTIFICATE" in alert or alert.endswith("_UNKNOWN_CA")):
        return None  # (another alert, a protocol version say: no certificate's fault)
    return (
        f"tried again every 5 s; {where} refused this host's own certificate ({alert}): check this host's"
        " tls.cert_file (its expiry, 'hsbctl status'; its CA must be in the other daemon's ca_file), renew it and"
        " send SIGHUP; the other daemon's tls_refused says why"
    )


def refusal_hint(error: Mapping[str, Any], key: str, link: str, target: str) -> str:
    """The fix for an error frame that refused this daemon's `link` ("host", "peer") at the
    address set as `key` (`host.cp`), which should be `target` ("the CP's host_listen")."""
    code = error.get("code")
    cause = error.get("cause")
    serves = error.get("serves")
    if not isinstance(serves, str):
        m = _SERVES.search(str(error.get("msg") or ""))
        serves = m.group(1) if m else None
    if serves is not None and serves != link:
        there = SERVED_BY.get(serves, f"the port of the {serves[:32]} link")
        return f"tried again every 5 s; {key} points at {there}, not at {target}: set {key} to {target}'s address"
    if code == "version_mismatch" or cause == "version":
        return "tried again every 5 s; install the same hsb version on both sides"
    if cause == "secret":
        return "tried again every 5 s; the two sides' secrets differ: give both the same secret file (secret_file; sha256sum must match)"
    if code == "tls_name_mismatch":
        return "tried again every 5 s; give each daemon a certificate that names it (its [cp] name or [host] name: docs/tls.md §2)"
    return DEFAULT_HINT


def silent_where_answered(exc: BaseException, fs: FrameStream | None, answered_before: bool) -> bool:
    """A connection made where an hsb link was authenticated before by this process, and no
    challenge within the time: a stuck daemon or a stalling network there, not a wrong port."""
    return answered_before and fs is not None and isinstance(exc, TimeoutError) and not fs.challenged


def not_hsb(
    exc: BaseException, fs: FrameStream | None, timeout: float, key: str, target: str, answered_before: bool = False
) -> tuple[str, str] | None:
    """(reason, fix) when the far end of a connection made (`fs`) answered as no hsb daemon's
    link does: no challenge within `timeout`, an error frame in its place (the CP's terminal port
    closing a connection that sent no hello), or bytes that are no hsb frame. None otherwise (not
    connected: unreachable, refused, a name; or a refusal of the authentication itself).
    `answered_before`: an hsb link at `key` was authenticated before by this process, so a
    challenge that does not come is a slow or stuck daemon or network, not a wrong port."""
    if fs is None:
        return None
    fix = f"point {key} at {target}"
    others = "(the CP's terminal_listen, an HTTP port, another program)"
    if isinstance(exc, NoChallenge):
        err = exc.error or {}
        return (
            f"the port sent {str(err.get('code'))[:40]}: {str(err.get('msg'))[:120]!r} where an hsb link sends its challenge",
            f"tried again every 5 s; {key} points at another kind of port {others}: {fix}",
        )
    if isinstance(exc, TimeoutError):
        if fs.challenged:  # an hsb daemon, which took the auth and did not answer it
            return (
                f"no answer to the authentication within {timeout:g} s (the challenge came)",
                f"tried again; the daemon at {key} is overloaded or stuck (its log says why), or {key} is not {target}: {fix}",
            )
        if silent_where_answered(exc, fs, answered_before):  # (found by the slow-links walk-through: a stall read as a wrong port)
            return (
                f"no challenge within {timeout:g} s of the connect (an hsb link sends it at once)",
                f"tried again; {target} at {key} answered before, so the daemon there is overloaded or stuck (its log says"
                " why), or the network to it stalls (ss -ti on both machines); or it was restarted speaking TLS and this host"
                " has no [tls] (give it the same [tls])",
            )
        return (
            f"no challenge within {timeout:g} s of the connect (an hsb link sends it at once)",
            f"tried again; most likely {key} points at a port that is no hsb link {others}: {fix}."
            " If it is that, the daemon there is stuck, or it speaks TLS and this host has no [tls] (give it the same [tls])",
        )
    if isinstance(exc, ProtocolError):
        return (
            f"the port does not speak hsb's link protocol ({exc.code}: {exc.msg[:120]})",
            f"tried again every 5 s; {key} points at another kind of port {others}: {fix}",
        )
    return None
